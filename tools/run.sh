#!/usr/bin/env bash
# Run any command inside the test environment, from the folder you are in (your paths stay yours):
#   bash ~/lora-forge/tools/run.sh python -m lora_forge preprocess photos/ data/10_zkw
source "$(dirname "$0")/env.sh"
exec "$@"
