#!/usr/bin/env bash
# Run any command inside the test environment, e.g.: bash tools/run.sh python bench/grid.py
source "$(dirname "$0")/env.sh"
exec "$@"
