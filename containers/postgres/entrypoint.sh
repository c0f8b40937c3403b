#!/bin/sh
# Our own entrypoint, so nothing depends on an image's: a primary gets `initdb` and the
# replication settings on first start; a standby (PRIMARY=host:port) is cloned with
# pg_basebackup from its primary, through whatever address it is given (the WAN proxy).
# With REWIND set, an existing data directory is rewound to PRIMARY's timeline instead.
# The data directory lives in a volume: a restarted container keeps its data.
# Every connection needs the run's password (SCRAM-SHA-256), replication included. It comes
# as a libpq password file (`*:*:*:postgres:PASSWORD`) at $TESTBED_PASSFILE, a bind mount or
# a Docker secret; the server and its WAL receiver read a private copy of it.
set -eu
SECRET=${TESTBED_PASSFILE:-/run/secrets/pgpass}
OWN="$(dirname "$PGDATA")/pgpass"
if [ "$(id -u)" = 0 ]; then
    if [ ! -r "$SECRET" ]; then
        echo "testbed-postgres: no password file at $SECRET: mount the run's libpq password" \
            "file there (or name it in TESTBED_PASSFILE)" >&2
        exit 64
    fi
    mkdir -p "$PGDATA" && chown -R postgres:postgres "$(dirname "$PGDATA")"
    install -m 0600 -o postgres -g postgres "$SECRET" "$OWN"
    exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi
export PGPASSFILE="$OWN"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    if [ -n "${PRIMARY:-}" ]; then
        host=${PRIMARY%:*}; port=${PRIMARY##*:}
        "$PGBIN/pg_basebackup" --host "$host" --port "$port" --username postgres \
            --pgdata "$PGDATA" --wal-method stream --checkpoint fast --write-recovery-conf
        printf "primary_conninfo = 'host=%s port=%s user=postgres passfile=%s application_name=%s'\n" \
            "$host" "$port" "$OWN" "${NAME:-standby}" >> "$PGDATA/postgresql.auto.conf"
    else
        pwfile="$(dirname "$PGDATA")/.initdb-pw"
        (umask 077 && head -n 1 "$OWN" | cut -d: -f5- > "$pwfile")
        "$PGBIN/initdb" --pgdata "$PGDATA" --username postgres --auth scram-sha-256 \
            --pwfile "$pwfile" --encoding UTF8 --locale C >/dev/null
        rm -f "$pwfile"
        cat >> "$PGDATA/postgresql.conf" <<CONF
listen_addresses = '*'
wal_level = replica
max_wal_senders = 10
max_replication_slots = 10
wal_keep_size = 256MB
wal_log_hints = on
hot_standby = on
wal_retrieve_retry_interval = 100ms
idle_in_transaction_session_timeout = 1s
unix_socket_directories = ''
password_encryption = 'scram-sha-256'
CONF
        cat > "$PGDATA/pg_hba.conf" <<HBA
host all all all scram-sha-256
host replication all all scram-sha-256
HBA
    fi
fi
if [ -n "${REWIND:-}" ] && [ -n "${PRIMARY:-}" ] && [ -s "$PGDATA/PG_VERSION" ]; then
    # An old primary whose standby was promoted: rewound to the new primary's timeline
    # (only the blocks changed since the fork are copied), then its streaming standby.
    host=${PRIMARY%:*}; port=${PRIMARY##*:}
    "$PGBIN/pg_rewind" --target-pgdata "$PGDATA" --no-sync \
        --source-server "host=$host port=$port user=postgres dbname=postgres"
    touch "$PGDATA/standby.signal"
    printf "primary_conninfo = 'host=%s port=%s user=postgres passfile=%s application_name=%s'\n" \
        "$host" "$port" "$OWN" "${NAME:-standby}" >> "$PGDATA/postgresql.auto.conf"
fi
chmod 0700 "$PGDATA"
exec "$PGBIN/postgres" -D "$PGDATA" -c "cluster_name=testbed-${NAME:-server}" "$@"
