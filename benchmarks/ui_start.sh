#!/usr/bin/env bash
# `mlflow ui` the light way (as README starts it) and plain, in turn, three times each: the
# seconds from start to /health answering, and the processes it runs (threads not counted).
# Run it from the project's folder, with the project's environment active.
set -euo pipefail
store="sqlite:///$(mktemp -d)/ui.db"
port=5077
python -c "import mlflow, sys; mlflow.MlflowClient(sys.argv[1]).search_experiments()" "$store"  # migrated before timing
for round in 1 2 3; do
    for way in light plain; do
        if [ "$way" = light ]; then
            command=(env MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false mlflow ui --workers 1)
        else
            command=(mlflow ui)
        fi
        start=$(date +%s.%N)
        "${command[@]}" --backend-store-uri "$store" --port "$port" >/dev/null 2>&1 &
        pid=$!
        until curl -sf "http://127.0.0.1:$port/health" >/dev/null; do sleep 0.1; done
        ready=$(date +%s.%N)
        processes=$(pstree -pT "$pid" | grep -o '([0-9]*)' | wc -l)
        echo "round $round $way: $(echo "$ready - $start" | bc) s to /health, $processes processes"
        kill -- "$pid"
        pkill -f -- "--port $port" || true
        while curl -sf "http://127.0.0.1:$port/health" >/dev/null; do sleep 0.2; done
        sleep 2
    done
done
