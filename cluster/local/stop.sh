#!/usr/bin/env bash
# Stop the scheduler and workers that cluster/local/start.sh started from DIR.
#
#   cluster/local/stop.sh [--dir DIR]     (DIR: ./dask-cluster)
#
# Workers first (they finish nothing: a flashscenic run still going fails, and `--resume`
# continues it later), then the scheduler; each gets 30 s to exit after SIGTERM, then SIGKILL.
# A process is stopped only if it is still the one start.sh started (same pid, same start
# time, a `dask` command); a pid that now belongs to another process is left alone.
set -euo pipefail

DIR=./dask-cluster
while [ $# -gt 0 ]; do
    case "$1" in
        --dir) DIR=$2; shift 2 ;;
        -h|--help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "stop.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
. "$(dirname "$0")/pids.sh"

stop() {  # the process group that start.sh started with setsid (launcher, nannies, workers)
    local file=$DIR/$1.pid pid
    [ -f "$file" ] || return 0
    if pid=$(ours "$1"); then
        kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 300); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL -- "-$pid" 2>/dev/null || true
    elif kill -0 "$(head -n 1 "$file")" 2>/dev/null; then
        echo "stop.sh: pid $(head -n 1 "$file") in $file is no longer the $1 start.sh started" \
             "(another process has that pid now); not stopping it" >&2
    fi
    rm -f "$file"
}
stop workers
stop scheduler
rm -f "$DIR/scheduler.json"
echo "stopped the cluster of $DIR"
