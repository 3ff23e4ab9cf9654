#!/bin/sh
# `make images`: the Triton and frontend images, named as k8s/ names them.
# Arguments go to `python -m stack.docker images` (--base ngc, --prometheus, --force ...).
set -eu
cd "$(dirname "$0")/.."
exec "${PYTHON:-.venv/bin/python}" -m stack.docker images "$@"
