#!/usr/bin/env bash
# The main job on a fresh machine: set up the environment, then build a tiny model and run every stage.
# It changes nothing outside ~/.cache/lora-forge and the --out folder (no system packages).
source "$(dirname "$0")/env.sh"
python -m lora_forge selftest "$@"
