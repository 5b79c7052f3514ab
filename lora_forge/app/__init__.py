"""The front desk: plain-Python use cases (start a training run, tag a folder, render a grid) that
the three faces — the gradio UI, the CLI and the HTTP API — call, so none of them owns the work.

Sits above the stage rooms (dataset, tagger, lora, model, train, grid, inspect) and `host/`, and
below `ui/`, `cli` and `api`; nothing here imports a face.
"""
