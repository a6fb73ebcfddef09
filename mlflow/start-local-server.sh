#!/usr/bin/env bash
# A real MLflow tracking server on one machine: SQLite backend store, artifacts served by the
# server itself (clients need no direct access to the artifact directory).
#
#   mlflow/start-local-server.sh [PORT]        then, in another shell:
#   MLFLOW_TRACKING_URI=http://127.0.0.1:PORT kd run
#
# Run it from the repository root with the project's venv active (make install).
set -euo pipefail
port="${1:-5000}"
state="${MLFLOW_SERVER_STATE:-$PWD/mlflow-server}"
mkdir -p "$state/artifacts"
exec mlflow server \
  --host 127.0.0.1 --port "$port" \
  --backend-store-uri "sqlite:///$state/mlflow.db" \
  --artifacts-destination "$state/artifacts" \
  --serve-artifacts
