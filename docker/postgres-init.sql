-- Run once, when the postgres service first initializes its volume. Optuna's studies and the
-- basic-auth app's users get their own databases (each keeps its own alembic_version table).
CREATE DATABASE optuna;
CREATE DATABASE mlflow_auth;
