"""The NUM × STRENGTH test grid: which LoRA epoch, at which weight, is faithful but not overfit.

plan: the files (X), the strengths (Y), the prompt, checks before anything renders;
render: the cells through any Host, row by row, stoppable; assemble: the labelled picture with
infotext; scores: fidelity / flexibility per cell and the recommendation; xyz: the same grid as
the WebUI's X/Y/Z plot settings; cli / selftest_stage: the headless faces.
"""
