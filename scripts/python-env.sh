#!/usr/bin/env bash
# Creates `.venv` in the repository with the pinned Python packages that the tests use. The JWT
# tests make tokens with an independent library (PyJWT with `cryptography`). The AI gateway
# tests call the gateway with the official `openai` and `anthropic` SDKs. The WAF test runs the
# `sqlmap` SQL injection scanner against a vulnerable test app, directly and through the gateway.
# The WAF model's training and evaluation scripts (crates/waf/model) use `numpy`.
#
# Reruns are fast: the script does nothing when `.venv/requirements.txt` already matches the
# pinned list below. Set PORTCULLIS_TEST_PYTHON to use another interpreter in the tests instead.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

requirements='pyjwt[crypto]==2.10.1
cryptography==44.0.2
openai==3.51.0
anthropic==2.10.0
sqlmap==1.10.10
numpy==2.2.6'

venv=.venv
if [[ -x "$venv/bin/python" && -f "$venv/requirements.txt" ]] &&
  [[ "$(cat "$venv/requirements.txt")" == "$requirements" ]]; then
  exit 0
fi

python="${PYTHON:-python3}"
if ! command -v "$python" >/dev/null; then
  echo "error: $python not found; install Python 3.9 or later (Debian: apt-get install python3 python3-venv)" >&2
  exit 1
fi
echo "creating $venv with: $(echo "$requirements" | tr '\n' ' ')"
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check $requirements
echo "$requirements" >"$venv/requirements.txt"
