#!/bin/sh
# Hand secrets mounted as files (compose secrets) to the libraries through their own
# environment variables, then run the command under docker/supervise.py, which passes a
# stop on to all of it and waits for all of it. No URI, argument, param or log line holds a secret:
#   POSTGRES_PASSWORD_FILE              -> PGPASSWORD (libpq: MLflow's backend store, Optuna's storage)
#   MLFLOW_TRACKING_PASSWORD_FILE       -> MLFLOW_TRACKING_PASSWORD (clients of a basic-auth server)
#   MLFLOW_AUTH_ADMIN_PASSWORD_FILE     -> MLFLOW_AUTH_ADMIN_PASSWORD (the basic-auth server's admin)
#   MLFLOW_FLASK_SERVER_SECRET_KEY_FILE -> MLFLOW_FLASK_SERVER_SECRET_KEY (its CSRF key)
set -eu

from_file() {  # from_file VARIABLE FILE_VARIABLE: export VARIABLE as the file FILE_VARIABLE names holds
    eval "file=\${$2:-}"
    [ -n "$file" ] || return 0
    if [ ! -r "$file" ]; then
        echo "error: $2: cannot read the secret file $file" >&2
        exit 2
    fi
    value="$(cat "$file")"
    export "$1=$value"
}

from_file PGPASSWORD POSTGRES_PASSWORD_FILE
from_file MLFLOW_TRACKING_PASSWORD MLFLOW_TRACKING_PASSWORD_FILE
from_file MLFLOW_AUTH_ADMIN_PASSWORD MLFLOW_AUTH_ADMIN_PASSWORD_FILE
from_file MLFLOW_FLASK_SERVER_SECRET_KEY MLFLOW_FLASK_SERVER_SECRET_KEY_FILE
unset file value

exec python "$(dirname "$0")/supervise.py" "$@"
