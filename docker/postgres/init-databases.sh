#!/usr/bin/env bash
# Creates one database per name in ABLATE_DATABASES (comma-separated; compose sets "optuna,mlflow"),
# owned by POSTGRES_USER. The postgres image runs /docker-entrypoint-initdb.d/* only when the data
# volume is empty, so changing the list later needs `docker compose down -v` or a manual CREATE.
# Idempotent anyway (tests run it twice) so a hand re-run after a partial init is safe.
set -euo pipefail

: "${POSTGRES_USER:?POSTGRES_USER must be set}"
: "${ABLATE_DATABASES:=optuna,mlflow}"
maintenance_db="${POSTGRES_DB:-$POSTGRES_USER}"

psql_admin() {
    psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$POSTGRES_USER" --dbname "$maintenance_db" "$@"
}

IFS=',' read -r -a names <<< "$ABLATE_DATABASES"
for raw in "${names[@]}"; do
    db="${raw//[[:space:]]/}"
    [[ -z "$db" ]] && continue
    # names are spliced into DDL (CREATE DATABASE takes no bind parameters): identifiers only
    if [[ ! "$db" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]]; then
        echo "init-databases: refusing database name '$db' (letters, digits, _ only)" >&2
        exit 1
    fi
    if [[ "$(psql_admin -tAc "SELECT 1 FROM pg_database WHERE datname = '$db'")" == "1" ]]; then
        echo "init-databases: database $db already exists"
    else
        psql_admin -c "CREATE DATABASE \"$db\" OWNER \"$POSTGRES_USER\""
        echo "init-databases: created database $db"
    fi
done
