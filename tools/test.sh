#!/usr/bin/env bash
# The one test command: sets up the test environment (first run only) and runs the whole suite.
source "$(dirname "$0")/env.sh"
python -m pytest "$@"
