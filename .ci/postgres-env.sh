# Sourced by .ci/test.sh: make sure a Postgres server answers and point the tests
# at it. Fails (never skips) when it cannot reach one.
: "${DATABASE_URL:=postgres://postgres@127.0.0.1:5432/postgres}"
export DATABASE_URL
export JETBRIDGE_REQUIRE_POSTGRES=1

pg_ready() { pg_isready -q -d "$DATABASE_URL" 2>/dev/null; }
if ! pg_ready; then
  if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
    echo "starting Postgres"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
    for _ in $(seq 1 30); do pg_ready && break; sleep 1; done
  fi
fi
if ! pg_ready; then
  echo "error: no Postgres server answers at $DATABASE_URL; the registry suite needs one." >&2
  echo "       Start one, or set DATABASE_URL to a server you can use." >&2
  exit 1
fi
