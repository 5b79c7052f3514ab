#!/usr/bin/env bash
# Sourced by tools/test.sh and tools/selftest.sh: makes (once) and activates a virtualenv with the
# versions the WebUI 1.10.1 runs with, outside the checkout so fresh clones reuse it.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${LORA_FORGE_PYTHON:-python3}
stamp=$(cat "$ROOT/requirements-test.txt" "$ROOT/tools/env.sh" | sha256sum | cut -c1-12)
VENV=${LORA_FORGE_VENV:-$HOME/.cache/lora-forge/venv-$stamp}
if [[ ! -f $VENV/.complete ]]; then
  # One line while it works: pip's and the libraries' own warnings go to a log, shown only on failure.
  LOG="$VENV.log"
  echo "setting up the environment in $VENV (first run only, a few minutes; log: $LOG)" >&2
  rm -rf "$VENV"
  mkdir -p "$(dirname "$VENV")"
  # pip's exit code is not the gate (a resolver complaint is not a broken environment): the import check is.
  pip_quiet() { "$VENV/bin/pip" install -q --disable-pip-version-check "$@" >>"$LOG" 2>&1 || true; }
  if ! {
    : >"$LOG" &&
    "$PY" -m venv "$VENV" >>"$LOG" 2>&1 &&
    pip_quiet -r "$ROOT/requirements-test.txt" &&
    # The `ldm` package the WebUI loads; its 2022 pins would downgrade the stack, so no deps.
    pip_quiet --no-deps stable-diffusion-sdkit==2.1.5 &&
    # `sgm` (SDXL's classes) is not on PyPI; imaginAIry ships a fork that lora_forge/host/sgm_compat.py
    # maps onto the WebUI's pinned sgm. Its own pins (and a 1 GB dependency tree) are not wanted.
    pip_quiet --no-deps imaginAIry==15.0.0 torchdiffeq==0.2.5 &&
    "$VENV/bin/python" -W ignore -c \
      "import ldm.models.diffusion.ddpm, imaginairy.modules.sgm.diffusion, gradio, onnxruntime, cv2, playwright" \
      >>"$LOG" 2>&1
  }; then
    tail -n 20 "$LOG" >&2
    echo "setting up the environment failed (the whole log: $LOG)" >&2
    exit 1
  fi
  touch "$VENV/.complete"
fi
export PATH="$VENV/bin:$PATH"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
# No `cd` here: tools/run.sh and tools/selftest.sh run in the user's folder, so the paths they give
# are read from where they typed them. Nothing here changes the system either (no apt): only the
# browser tests need Chromium, and tools/test.sh installs it.
