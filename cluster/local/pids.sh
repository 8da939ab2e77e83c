# Sourced by start.sh and stop.sh: the pid files of the processes start.sh starts.
# A pid file holds the pid and the process's start time (`ps -o lstart`), so that a pid
# that the system has since given to another process is never taken for ours.

record_pid() {  # record_pid NAME PID
    printf '%s\n%s\n' "$2" "$(ps -o lstart= -p "$2")" >"$DIR/$1.pid"
}

# ours NAME: print the recorded pid when that process is still the `dask` process start.sh
# started; fail (printing nothing) when it is gone or the pid now belongs to another process.
ours() {
    local file=$DIR/$1.pid pid started
    [ -f "$file" ] || return 1
    { read -r pid; read -r started; } <"$file" || true
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    [ -n "$started" ] && [ "$(ps -o lstart= -p "$pid" 2>/dev/null)" = "$started" ] || return 1
    [[ $(ps -o args= -p "$pid") == *dask* ]] || return 1
    echo "$pid"
}
