#!/bin/sh
# A local cluster: N adaptree replicas on free 127.0.0.1 ports behind HAProxy, with the routing
# of deploy/haproxy/haproxy.cfg (what Docker Compose and Kubernetes run too). `make cluster`.
#
#   tools/cluster.sh [-n 3] [-p 8080] [-m MODEL] [-r REGISTRY] [-- extra serve flags]
#   tools/cluster.sh --write-replicas FILE NAME=HOST:PORT ...    (only write the replicas file)
#
# Clients talk to http://127.0.0.1:PORT; the replicas' own ports and logs are printed, and
# HAProxy's stats page is on 127.0.0.1:PORT+324 (8404 for 8080). Ctrl-C or SIGTERM drains the
# replicas (their running requests finish), then stops HAProxy. The replicas share the machine:
# each gets --threads 1 unless extra flags say otherwise (one machine per replica is the point of
# scaling out; this is the demonstration and the test bed).
set -eu

# The replicas file: the two backends of haproxy.cfg with one server line each per replica.
write_replicas() {
    out=$1
    shift
    {
        echo "# The replicas of deploy/haproxy/haproxy.cfg on this machine (written by tools/cluster.sh)."
        for b in by_adapter least_loaded; do
            echo
            echo "backend $b from $b"
            for s in "$@"; do
                echo "    server ${s%%=*} ${s#*=}"
            done
        done
    } >"$out.tmp"
    mv "$out.tmp" "$out"
}

if [ "${1:-}" = "--write-replicas" ]; then
    shift
    write_replicas "$@"
    exit 0
fi

cd "$(dirname "$0")/.."
n=3 port=8080 model=models/SmolLM2-135M-Instruct.Q4_1.gguf registry=registry
bin=${BUILD:-build}/adaptree
while [ $# -gt 0 ]; do
    case $1 in
    -n) n=$2; shift 2 ;;
    -p) port=$2; shift 2 ;;
    -m) model=$2; shift 2 ;;
    -r) registry=$2; shift 2 ;;
    --) shift; break ;;
    -h | --help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "cluster: unknown option '$1' (see tools/cluster.sh --help)" >&2; exit 2 ;;
    esac
done
case $n in '' | *[!0-9]*) echo "cluster: -n wants a number of replicas, got '$n'" >&2; exit 2 ;; esac
case $port in '' | *[!0-9]*) echo "cluster: -p wants a port, got '$port'" >&2; exit 2 ;; esac
[ "$n" -ge 1 ] && [ "$n" -le 16 ] || { echo "cluster: -n must be 1 to 16" >&2; exit 2; }
command -v haproxy >/dev/null || { echo "cluster: haproxy is not installed (make deps)" >&2; exit 1; }
[ -x "$bin" ] || { echo "cluster: $bin is missing (make)" >&2; exit 1; }
[ -f "$model" ] || { echo "cluster: $model is missing (make model)" >&2; exit 1; }

dir=${BUILD:-build}/cluster
mkdir -p "$dir"
# Free ports for the replicas (the kernel's pick; released just before the replicas bind them).
ports=$(python3 -c "
import socket
ss = [socket.socket() for _ in range($n)]
for s in ss: s.bind(('127.0.0.1', 0))
print(' '.join(str(s.getsockname()[1]) for s in ss))")

pids="" hpid=""
# Drains the replicas (HAProxy keeps routing to those still up), then stops HAProxy.
stop() {
    trap - INT TERM EXIT
    echo "cluster: draining the replicas"
    for p in $pids; do kill -TERM "$p" 2>/dev/null || true; done
    for p in $pids; do wait "$p" 2>/dev/null || true; done
    [ -n "$hpid" ] && kill -TERM "$hpid" 2>/dev/null && wait "$hpid" 2>/dev/null
    echo "cluster: stopped"
    exit "${1:-0}"
}
trap 'stop 0' INT TERM
trap 'stop 1' EXIT

servers="" i=0
for p in $ports; do
    i=$((i + 1))
    name=replica-$i
    "$bin" serve --host 127.0.0.1 --port "$p" -m "$model" --registry "$registry" \
        --replica-name "$name" --max-connections-per-ip 0 --threads 1 --drain-delay 3 "$@" \
        >"$dir/$name.log" 2>&1 &
    pids="$pids $!"
    servers="$servers $name=127.0.0.1:$p"
    echo "cluster: $name on 127.0.0.1:$p (log $dir/$name.log)"
done
# Waits up to $2 tenths of a second for $1/health to answer 200; else shows log $4 of $3 and fails.
wait_healthy() {
    t=0
    until curl -fsS "$1/health" >/dev/null 2>&1; do
        t=$((t + 1))
        if [ $t -gt "$2" ]; then
            echo "cluster: $3 did not become healthy; its log:" >&2
            tail -n 20 "$4" >&2
            exit 1
        fi
        sleep 0.1
    done
}
for s in $servers; do
    wait_healthy "http://${s#*=}" 600 "${s%%=*}" "$dir/${s%%=*}.log"
done
# shellcheck disable=SC2086
write_replicas "$dir/replicas-local.cfg" $servers
export ADAPTREE_LISTEN="127.0.0.1:$port" ADAPTREE_STATS="127.0.0.1:$((port + 324))"
haproxy -W -db -f deploy/haproxy/haproxy.cfg -f "$dir/replicas-local.cfg" >"$dir/haproxy.log" 2>&1 &
hpid=$!
wait_healthy "http://127.0.0.1:$port" 100 HAProxy "$dir/haproxy.log"
echo "cluster: serving on http://127.0.0.1:$port ($n replicas; HAProxy stats on" \
    "http://$ADAPTREE_STATS/, log $dir/haproxy.log); Ctrl-C stops"
while :; do
    sleep 1 &
    wait $! || true
    for p in $pids $hpid; do
        kill -0 "$p" 2>/dev/null || { echo "cluster: process $p exited; stopping" >&2; stop 1; }
    done
done
