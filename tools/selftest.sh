#!/usr/bin/env bash
# The main job on a fresh machine: set up the environment, then build a tiny model and run every stage.
source "$(dirname "$0")/env.sh"
python -m lora_forge selftest "$@"
