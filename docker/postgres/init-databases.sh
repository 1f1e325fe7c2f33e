#!/usr/bin/env bash
# Creates one database per name in ABLATE_DATABASES (comma-separated; compose sets "optuna,mlflow") and
# the application's login role ABLATE_DB_USER (compose: ablate_app), which then owns those databases and
# their public schema. Everything the stack runs (mlflow, optuna-dashboard, ablate workers) logs in as that
# role; POSTGRES_USER stays the superuser, for administration only. docs/deploy.md explains why.
#
# The postgres image runs /docker-entrypoint-initdb.d/* only when the data volume is empty. The script is
# idempotent, so it can also be run by hand on an existing volume, e.g. one from before the app role:
#   docker compose exec postgres bash /docker-entrypoint-initdb.d/10-ablate-databases.sh
# It then also hands the tables an earlier superuser-run stack created over to the app role.
#
# Passwords are read from the environment, never put on a psql command line (argv is what `ps` shows), and
# every name or password reaches SQL as a psql variable, quoted by psql (:"ident", :'literal').
set -euo pipefail

: "${POSTGRES_USER:?POSTGRES_USER must be set}"
: "${ABLATE_DATABASES:=optuna,mlflow}"
maintenance_db="${POSTGRES_DB:-$POSTGRES_USER}"
app_role="${ABLATE_DB_USER:-}"

# --- check everything before touching the cluster ------------------------------------------------------
databases=()
IFS=',' read -r -a names <<< "$ABLATE_DATABASES"
for raw in "${names[@]}"; do
    db="${raw//[[:space:]]/}"
    [[ -z "$db" ]] && continue
    # the names also end up in connection URLs: plain identifiers only
    if [[ ! "$db" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]]; then
        echo "init-databases: refusing database name '$db' (letters, digits, _ only)" >&2
        exit 1
    fi
    databases+=("$db")
done

# Without ABLATE_DB_USER only the databases are made (owned by POSTGRES_USER): the layout of stacks from
# before the app role. Compose always sets it, and refuses to start without ABLATE_DB_PASSWORD.
if [[ -n "$app_role" ]]; then
    : "${ABLATE_DB_PASSWORD:?ABLATE_DB_PASSWORD must be set (the password of ABLATE_DB_USER)}"
    if [[ "$app_role" == "$POSTGRES_USER" ]]; then
        echo "init-databases: ABLATE_DB_USER must not be the superuser POSTGRES_USER ($POSTGRES_USER)" >&2
        exit 1
    fi
    # the role name goes into connection URLs too
    if [[ ! "$app_role" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]]; then
        echo "init-databases: refusing role name '$app_role' (letters, digits, _ only)" >&2
        exit 1
    fi
    # compose splices the password into connection URLs unescaped; anything else would corrupt them
    if [[ ! "$ABLATE_DB_PASSWORD" =~ ^[A-Za-z0-9._~-]+$ ]]; then
        echo "init-databases: ABLATE_DB_PASSWORD may hold only letters, digits and . _ ~ - (it goes into" \
             "URLs unescaped); e.g. openssl rand -hex 24" >&2
        exit 1
    fi
fi

psql_admin() {
    # $1: database to connect to; SQL on stdin. ON_ERROR_STOP: a failed statement fails the script.
    psql -v ON_ERROR_STOP=1 --no-psqlrc --quiet --username "$POSTGRES_USER" --dbname "$1" \
        -v app_role="$app_role" "${@:2}"
}

# --- the app role: created once, its attributes and password (re)set on every run --------------------
if [[ -n "$app_role" ]]; then
    # \getenv (psql 15+; the image ships 16) reads the password inside psql: it is in no argv. The
    # attributes are spelled out so a role that exists with more rights is brought back down.
    psql_admin "$maintenance_db" <<'SQL'
\getenv app_password ABLATE_DB_PASSWORD
SELECT format('CREATE ROLE %I LOGIN', :'app_role')
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'app_role')
\gexec
ALTER ROLE :"app_role" WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS
    PASSWORD :'app_password';
SQL
    echo "init-databases: login role $app_role ready (no superuser, cannot create databases or roles)"
fi

# --- the databases -------------------------------------------------------------------------------------
for db in "${databases[@]}"; do
    # SQL on stdin, not -c: psql substitutes :'var' / :"var" only in what it reads as a script
    exists="$(psql_admin "$maintenance_db" -v db="$db" -tA <<< "SELECT 1 FROM pg_database WHERE datname = :'db';")"
    if [[ "$exists" == "1" ]]; then
        echo "init-databases: database $db already exists"
    else
        psql_admin "$maintenance_db" -v db="$db" <<< 'CREATE DATABASE :"db";'
        echo "init-databases: created database $db"
    fi
    [[ -z "$app_role" ]] && continue

    # Ownership rather than grants: Optuna and MLflow create and later migrate (ALTER) their own tables,
    # which only an owner may do. Owning the public schema covers PostgreSQL 15+, which no longer lets
    # PUBLIC create there, and clusters initialised by older versions alike. CONNECT and TEMP are taken
    # from PUBLIC: any role added later gets into these databases only by an explicit GRANT.
    psql_admin "$db" -v db="$db" <<'SQL'
ALTER DATABASE :"db" OWNER TO :"app_role";
REVOKE CONNECT, TEMPORARY ON DATABASE :"db" FROM PUBLIC;
ALTER SCHEMA public OWNER TO :"app_role";
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
-- A database from before the app role holds tables the superuser created: hand them over. Sequences
-- that belong to a column follow their table (altering them directly is an error); array types follow
-- their element type; objects of extensions stay with the extension.
SELECT format('ALTER %s %I.%I OWNER TO %I',
              CASE c.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW'
                             WHEN 'S' THEN 'SEQUENCE' WHEN 'f' THEN 'FOREIGN TABLE' ELSE 'TABLE' END,
              n.nspname, c.relname, :'app_role')
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
   AND c.relowner <> (SELECT oid FROM pg_roles WHERE rolname = :'app_role')
   AND NOT EXISTS (SELECT 1 FROM pg_depend d
                    WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype IN ('a', 'i', 'e'))
\gexec
SELECT format('ALTER TYPE %I.%I OWNER TO %I', n.nspname, t.typname, :'app_role')
  FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
 WHERE n.nspname = 'public' AND t.typtype IN ('e', 'd', 'r')
   AND t.typowner <> (SELECT oid FROM pg_roles WHERE rolname = :'app_role')
   AND NOT EXISTS (SELECT 1 FROM pg_depend d
                    WHERE d.classid = 'pg_type'::regclass AND d.objid = t.oid AND d.deptype = 'e')
\gexec
SQL
    echo "init-databases: database $db and its public schema belong to $app_role"
done
