#!/usr/bin/env bash
# Runs portcullis on examples/quickstart/gateway.yaml in front of the echo upstream.
#
# Builds both binaries in release mode, generates a self-signed certificate for localhost
# on first use, and picks a random admin token unless PORTCULLIS_ADMIN_TOKEN is set. Stop it
# with Ctrl-C; the echo upstream stops with it.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cd "$root"

cargo build --release --locked -p portcullis -p echo-upstream

if [[ ! -f "$here/tls/gateway.crt" ]]; then
  mkdir -p "$here/tls"
  openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=localhost" \
    -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
    -keyout "$here/tls/gateway.key" -out "$here/tls/gateway.crt" 2>/dev/null
  echo "generated a self-signed certificate in $here/tls/"
fi

if [[ -z "${PORTCULLIS_ADMIN_TOKEN:-}" ]]; then
  PORTCULLIS_ADMIN_TOKEN="pca_$(openssl rand -hex 24)"
  export PORTCULLIS_ADMIN_TOKEN
  echo "admin token for this run: $PORTCULLIS_ADMIN_TOKEN"
fi

target/release/echo-upstream 127.0.0.1:9000 &
upstream_pid=$!
trap 'kill "$upstream_pid" 2>/dev/null || true' EXIT

echo "try: curl -i http://127.0.0.1:8000/echo/hello"
echo "     curl -i -H 'apikey: alice-demo-key-0001' http://127.0.0.1:8000/echo/hello"
target/release/portcullis serve --config "$here/gateway.yaml"
