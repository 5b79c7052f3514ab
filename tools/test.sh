#!/usr/bin/env bash
# The one test command: sets up the test environment (first run only) and runs the whole suite.
source "$(dirname "$0")/env.sh"
cd "$ROOT"
# Browser tests drive Debian's Chromium (Playwright never downloads its own browser here). Only the
# tests need it, so only this script installs it (as root with apt; otherwise they are skipped).
if ! command -v chromium >/dev/null 2>&1 && [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null 2>&1; then
  echo "installing chromium for the browser tests" >&2
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-noto-cjk) >/dev/null 2>&1 \
    || echo "could not install chromium; browser tests will be skipped" >&2
fi
python -m pytest "$@"
