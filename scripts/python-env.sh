#!/usr/bin/env bash
# Creates or updates the Python virtual environment `.venv` at the repository root with the
# pinned client libraries that the integration tests drive the gateway with.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

requirements=scripts/python-requirements.txt
if [[ ! -x .venv/bin/python ]]; then
  echo "creating the Python virtual environment in .venv"
  python3 -m venv .venv
fi
# Installing is skipped when every pinned package is already present.
if ! .venv/bin/python -m pip install --disable-pip-version-check -q --no-deps --dry-run \
  -r "$requirements" 2>/dev/null | grep -q "Would install"; then
  exit 0
fi
.venv/bin/python -m pip install --disable-pip-version-check -q -r "$requirements"
