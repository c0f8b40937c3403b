#!/bin/sh
# Our own entrypoint, so nothing depends on an image's: a primary gets `initdb` and the
# replication settings on first start; a standby (PRIMARY=host:port) is cloned with
# pg_basebackup from its primary, through whatever address it is given (the WAN proxy).
# The data directory lives in a volume: a restarted container keeps its data.
set -eu
if [ "$(id -u)" = 0 ]; then
    mkdir -p "$PGDATA" && chown -R postgres:postgres "$(dirname "$PGDATA")"
    exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    if [ -n "${PRIMARY:-}" ]; then
        host=${PRIMARY%:*}; port=${PRIMARY##*:}
        "$PGBIN/pg_basebackup" --host "$host" --port "$port" --username postgres \
            --pgdata "$PGDATA" --wal-method stream --checkpoint fast --write-recovery-conf
        printf "primary_conninfo = 'host=%s port=%s user=postgres application_name=%s'\n" \
            "$host" "$port" "${NAME:-standby}" >> "$PGDATA/postgresql.auto.conf"
    else
        "$PGBIN/initdb" --pgdata "$PGDATA" --username postgres --auth trust \
            --encoding UTF8 --locale C >/dev/null
        cat >> "$PGDATA/postgresql.conf" <<CONF
listen_addresses = '*'
wal_level = replica
max_wal_senders = 10
max_replication_slots = 10
wal_log_hints = on
hot_standby = on
wal_retrieve_retry_interval = 100ms
idle_in_transaction_session_timeout = 1s
unix_socket_directories = ''
CONF
        cat > "$PGDATA/pg_hba.conf" <<HBA
host all all all trust
host replication all all trust
HBA
    fi
fi
chmod 0700 "$PGDATA"
exec "$PGBIN/postgres" -D "$PGDATA" -c "cluster_name=testbed-${NAME:-server}" "$@"
