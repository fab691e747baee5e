# Starts a throwaway PostgreSQL server on loopback and exports SHAPEYARD_TEST_POSTGRES_URL.
# Sourced by .ci/run; installs Debian's postgresql package when the machine lacks it.
pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }
if [ -z "$(pg_bin)" ]; then
  echo "installing postgresql (Debian package)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi
PG_BIN="$(pg_bin)"
PG_PORT="${PG_PORT:-55432}"
PG_DATA="$(mktemp -d /tmp/shapeyard-pg.XXXXXX)"
as_pg() {
  if [ "$(id -u)" = 0 ]; then chown -R postgres: "$PG_DATA"; runuser -u postgres -- "$@"; else "$@"; fi
}
as_pg "$PG_BIN/initdb" -D "$PG_DATA" -A trust -U postgres >/dev/null
as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$PG_DATA/server.log" -w \
  -o "-p $PG_PORT -k $PG_DATA -c listen_addresses=127.0.0.1" start >/dev/null
trap 'as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast stop >/dev/null 2>&1; rm -rf "$PG_DATA"' EXIT
export SHAPEYARD_TEST_POSTGRES_URL="postgresql://postgres@127.0.0.1:$PG_PORT/postgres"
echo "PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}') on $SHAPEYARD_TEST_POSTGRES_URL"
