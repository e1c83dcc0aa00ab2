#!/usr/bin/env bash
# Runs the whole test suite: unit tests and the integration tests that start the real gateway.
#
# The store tests need PostgreSQL at 127.0.0.1:5432 with trust authentication and a database
# named `test` (override with PORTCULLIS_TEST_POSTGRES_URL). This script starts the local
# cluster when it is installed but stopped, and creates the database when it is missing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

postgres_url="${PORTCULLIS_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}"

if [[ -z "${PORTCULLIS_TEST_POSTGRES_URL:-}" ]]; then
  if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
    if command -v pg_ctlcluster >/dev/null && [[ -d /etc/postgresql ]]; then
      echo "starting the local PostgreSQL cluster"
      pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
    fi
  fi
  for _ in $(seq 1 30); do
    pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null && break
    sleep 1
  done
  if ! pg_isready -q -h 127.0.0.1 -p 5432; then
    echo "error: PostgreSQL does not answer at 127.0.0.1:5432; start it or set PORTCULLIS_TEST_POSTGRES_URL" >&2
    exit 1
  fi
  if ! psql -h 127.0.0.1 -U postgres -d test -c 'SELECT 1' >/dev/null 2>&1; then
    createdb -h 127.0.0.1 -U postgres test
  fi
fi
echo "PostgreSQL for tests: $postgres_url"

# The JWT tests make tokens with PyJWT from this virtualenv (or PORTCULLIS_TEST_PYTHON).
if [[ -z "${PORTCULLIS_TEST_PYTHON:-}" ]]; then
  scripts/python-env.sh
fi

# The OpenID Connect tests run the oidc-provider package from crates/portcullis/tests/oidc.
oidc_dir=crates/portcullis/tests/oidc
if command -v npm >/dev/null && [[ ! -d "$oidc_dir/node_modules" ]]; then
  npm ci --prefix "$oidc_dir" --no-audit --no-fund
fi

cargo test --workspace --locked "$@"
