#!/bin/sh
# Stand-in for the official postgres image's entrypoint: on first start,
# create the cluster in PGDATA with POSTGRES_USER / POSTGRES_PASSWORD and
# the database POSTGRES_DB, then run the server as the postgres user,
# listening on every address with password authentication.
set -eu

: "${POSTGRES_USER:=postgres}"
: "${POSTGRES_DB:=$POSTGRES_USER}"
as_postgres() { runuser -u postgres -- "$@"; }

install -d -o postgres -g postgres /run/postgresql
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    install -d -o postgres -g postgres -m 700 "$PGDATA"
    password_file=$(mktemp)
    printf '%s' "$POSTGRES_PASSWORD" > "$password_file"
    chown postgres "$password_file"
    as_postgres initdb --pgdata="$PGDATA" --username="$POSTGRES_USER" --pwfile="$password_file" \
        --auth-local=trust --auth-host=scram-sha-256 --no-sync
    rm "$password_file"
    echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
    if [ "$POSTGRES_DB" != postgres ]; then
        as_postgres postgres --single -D "$PGDATA" postgres <<SQL
CREATE DATABASE "$POSTGRES_DB";
SQL
    fi
fi

exec setpriv --reuid=postgres --regid=postgres --init-groups -- "$@"
