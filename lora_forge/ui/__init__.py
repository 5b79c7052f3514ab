"""gradio Blocks for the 炼丹 tab: wiring only, no logic beyond calling the stages."""
