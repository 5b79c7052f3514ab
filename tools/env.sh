#!/usr/bin/env bash
# Sourced by tools/test.sh and tools/selftest.sh: makes (once) and activates a virtualenv with the
# versions the WebUI 1.10.1 runs with, outside the checkout so fresh clones reuse it.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${LORA_FORGE_PYTHON:-python3}
stamp=$(cat "$ROOT/requirements-test.txt" "$ROOT/tools/env.sh" | sha256sum | cut -c1-12)
VENV=${LORA_FORGE_VENV:-$HOME/.cache/lora-forge/venv-$stamp}
if [[ ! -f $VENV/.complete ]]; then
  echo "setting up the test environment in $VENV (first run only)" >&2
  rm -rf "$VENV"
  mkdir -p "$(dirname "$VENV")"
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check -r "$ROOT/requirements-test.txt" 2>&1 | grep -v "^WARNING: Location" >&2 || true
  # The `ldm` package the WebUI loads; its 2022 pins would downgrade the stack, so no deps.
  "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps stable-diffusion-sdkit==2.1.5 2>&1 | grep -v "^WARNING: Location" >&2 || true
  # `sgm` (SDXL's classes) is not on PyPI; imaginAIry ships a fork that lora_forge/host/sgm_compat.py
  # maps onto the WebUI's pinned sgm. Its own pins (and a 1 GB dependency tree) are not wanted.
  "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps imaginAIry==15.0.0 torchdiffeq==0.2.5 2>&1 | grep -v "^WARNING: Location" >&2 || true
  "$VENV/bin/python" -c "import ldm.models.diffusion.ddpm, imaginairy.modules.sgm.diffusion, gradio, onnxruntime, cv2, playwright" >&2
  touch "$VENV/.complete"
fi
# Browser tests drive Debian's Chromium (Playwright never downloads its own browser here).
if ! command -v chromium >/dev/null 2>&1 && [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null 2>&1; then
  echo "installing chromium for the browser tests" >&2
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-noto-cjk) >/dev/null 2>&1 \
    || echo "could not install chromium; browser tests will be skipped" >&2
fi
export PATH="$VENV/bin:$PATH"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
cd "$ROOT"
