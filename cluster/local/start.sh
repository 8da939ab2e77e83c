#!/usr/bin/env bash
# Start a Dask scheduler and workers on this machine, in the background, for
# `flashscenic run --scheduler-file DIR/scheduler.json`.
#
#   cluster/local/start.sh [--dir DIR] [--host HOST] [--port PORT] [--dashboard-port PORT]
#                          [--workers N] [--threads T] [--memory-limit LIMIT] [--gpu]
#
#   --dir DIR             where the scheduler file, logs and process ids go (./dask-cluster)
#   --host HOST           address everything binds to (127.0.0.1: this machine only; the
#                         node's address, e.g. $(hostname -i), to let other nodes join)
#   --port PORT           scheduler port (8786; 0: any free port, read it from the scheduler file)
#   --dashboard-port PORT dashboard port (8787; 0: any free port; "none": no dashboard)
#   --workers N           worker processes (default: one per core; with --gpu one per GPU)
#   --threads T           threads per worker (1)
#   --memory-limit LIMIT  memory limit per worker ("auto": the machine's memory split between them)
#   --gpu                 `dask cuda worker` (needs dask-cuda): one worker per GPU, resource GPU=1
#
# Stop everything with cluster/local/stop.sh --dir DIR. More workers, from this or another
# node that sees DIR (a shared filesystem):
#   dask worker --scheduler-file DIR/scheduler.json --nthreads 1 [--host NODE_ADDRESS]
# The `dask` command is taken from $DASK, else from PATH (the environment flashscenic is in).
set -euo pipefail

DIR=./dask-cluster HOST=127.0.0.1 PORT=8786 DASHBOARD=8787 WORKERS="" THREADS=1 MEMORY=auto GPU=0
while [ $# -gt 0 ]; do
    case "$1" in
        --dir) DIR=$2; shift 2 ;;
        --host) HOST=$2; shift 2 ;;
        --port) PORT=$2; shift 2 ;;
        --dashboard-port) DASHBOARD=$2; shift 2 ;;
        --workers) WORKERS=$2; shift 2 ;;
        --threads) THREADS=$2; shift 2 ;;
        --memory-limit) MEMORY=$2; shift 2 ;;
        --gpu) GPU=1; shift ;;
        -h|--help) sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "start.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

. "$(dirname "$0")/pids.sh"
DASK=${DASK:-$(command -v dask || true)}
if [ -z "$DASK" ] || [ ! -x "$DASK" ]; then
    echo "start.sh: no 'dask' command; activate the environment flashscenic is installed in, or set DASK=/path/to/dask" >&2
    exit 1
fi
PYTHON=${PYTHON:-$(dirname "$DASK")/python}
[ -x "$PYTHON" ] || PYTHON=python3

mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
for name in scheduler workers; do
    if ours "$name" >/dev/null; then
        echo "start.sh: a cluster is already running from $DIR (stop it with cluster/local/stop.sh --dir $DIR)" >&2
        exit 1
    fi
done
rm -f "$DIR/scheduler.json" "$DIR"/*.pid

if [ "$DASHBOARD" = none ]; then
    DASHBOARD_OPTIONS=(--no-dashboard)
else
    DASHBOARD_OPTIONS=(--dashboard-address "$HOST:$DASHBOARD")
fi

# The scheduler, detached from this shell (its own session: a Ctrl-C here does not reach it).
setsid "$DASK" scheduler --host "$HOST" --port "$PORT" "${DASHBOARD_OPTIONS[@]}" \
    --scheduler-file "$DIR/scheduler.json" >"$DIR/scheduler.log" 2>&1 </dev/null &
SCHEDULER_PID=$!
record_pid scheduler $SCHEDULER_PID
for _ in $(seq 600); do
    [ -s "$DIR/scheduler.json" ] && break
    if ! kill -0 $SCHEDULER_PID 2>/dev/null; then
        echo "start.sh: the scheduler exited; see $DIR/scheduler.log:" >&2
        tail -n 20 "$DIR/scheduler.log" >&2
        exit 1
    fi
    sleep 0.1
done
[ -s "$DIR/scheduler.json" ] || { echo "start.sh: no scheduler file after 60 s; see $DIR/scheduler.log" >&2; exit 1; }

# The workers: one launcher process (its pid is recorded) and a nanny + worker process each.
if [ "$GPU" = 1 ]; then
    WORKER_COMMAND=(cuda worker --resources "GPU=1")
    [ -n "$WORKERS" ] && export CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-$(seq -s, 0 $((WORKERS - 1)))}
else
    WORKERS=${WORKERS:-$(getconf _NPROCESSORS_ONLN)}
    WORKER_COMMAND=(worker --nworkers "$WORKERS")
fi
# torch-friendly malloc in Dask workers (see ../README.md); the workers inherit it.
export MALLOC_MMAP_THRESHOLD_=${MALLOC_MMAP_THRESHOLD_:-33554432}
setsid "$DASK" "${WORKER_COMMAND[@]}" --scheduler-file "$DIR/scheduler.json" --host "$HOST" \
    --nthreads "$THREADS" --memory-limit "$MEMORY" --local-directory "$DIR/work" \
    >"$DIR/workers.log" 2>&1 </dev/null &
record_pid workers $!

# Wait until the workers have connected (GPU: one per visible GPU, however many that is).
EXPECTED=${WORKERS:-1}
if ! "$PYTHON" - "$DIR/scheduler.json" "$EXPECTED" <<'PY'
import sys
from distributed import Client
with Client(scheduler_file=sys.argv[1], timeout=30) as client:
    client.wait_for_workers(int(sys.argv[2]), timeout=120)
    info = client.scheduler_info(n_workers=-1)
    print(f"scheduler {info['address']}, {len(info['workers'])} workers, dashboard {client.dashboard_link}")
PY
then
    echo "start.sh: the workers did not connect; see $DIR/workers.log:" >&2
    tail -n 20 "$DIR/workers.log" >&2
    exit 1
fi
echo "scheduler file: $DIR/scheduler.json"
echo "run:  flashscenic run ... --scheduler-file $DIR/scheduler.json"
echo "stop: $(dirname "$0")/stop.sh --dir $DIR"
