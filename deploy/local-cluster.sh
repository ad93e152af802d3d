#!/usr/bin/env bash
# A whole cluster on one machine, one process per role: etcd, a router, a GRM worker and a
# meta-RM worker on the embedded models (models/grm, models/meta-rm), and an aggregator.
# Waits until the router sees every member, prints how to reach it, and stops everything on
# exit (Ctrl-C, an error, or a member that dies).
#
#   deploy/local-cluster.sh            run until Ctrl-C
#   deploy/local-cluster.sh --smoke    score one request against it, then stop
#
# Environment:
#   GRM                   the grm binary (default: target/release/grm, else grm on PATH)
#   ETCD                  the etcd binary (default: etcd on PATH, else /usr/bin/etcd)
#   GRM_MODELS            where grm/ and meta-rm/ are (default: models/ of this checkout)
#   GRM_LOCAL_GRPC_PORT   the router's gRPC port (default 50051; 0: a free one)
#   GRM_LOCAL_HTTP_PORT   the router's HTTP port (/get_reward, /health, /metrics; default 8080)
#   GRM_LOCAL_DEVICE      the workers' --device (default cpu; cuda:0 with a CUDA build)
#   GRM_LOCAL_KEEP        1: keep the data and logs directory after exit
set -euo pipefail
cd "$(dirname "$0")/.."

smoke=0
case "${1:-}" in
  --smoke) smoke=1 ;;
  "") ;;
  -h | --help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) echo "local-cluster: unknown argument $1 (try --help)" >&2; exit 2 ;;
esac

die() { echo "local-cluster: $*" >&2; exit 1; }

grm=${GRM:-}
if [ -z "$grm" ]; then
  if [ -x target/release/grm ]; then grm=$PWD/target/release/grm
  else grm=$(command -v grm) || die "no grm binary: build it (cargo build --release) or set GRM"; fi
fi
etcd=${ETCD:-$(command -v etcd || echo /usr/bin/etcd)}
[ -x "$etcd" ] || die "no etcd binary: install etcd (bash scripts/setup.sh does) or set ETCD"
models=${GRM_MODELS:-$PWD/models}
for m in grm meta-rm; do
  [ -f "$models/$m/config.json" ] || die "no model in $models/$m (set GRM_MODELS)"
done
command -v python3 >/dev/null || die "python3 is needed (free ports, HTTP checks)"

# A port nobody listens on now (the kernel picks it; a race with another program is unlikely).
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# The body of an HTTP GET, or nothing.
http_get() {
  python3 - "$1" <<'PY' 2>/dev/null || true
import sys, urllib.request
try:
    print(urllib.request.urlopen(sys.argv[1], timeout=2).read().decode())
except Exception:
    pass
PY
}

dir=$(mktemp -d "${TMPDIR:-/tmp}/grm-local.XXXXXX")
pids=()
names=()

cleanup() {
  local status=$?
  trap - EXIT INT TERM
  # Reverse order: the router first, etcd last (members deregister from it on SIGTERM).
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    kill -TERM "${pids[i]}" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "${pids[i]}" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "${pids[i]}" 2>/dev/null || true
    wait "${pids[i]}" 2>/dev/null || true
  done
  # Ctrl-C (130) is the normal way out; any other failure keeps the logs.
  if { [ "$status" != 0 ] && [ "$status" != 130 ]; } || [ "${GRM_LOCAL_KEEP:-0}" = 1 ]; then
    echo "local-cluster: logs kept in $dir" >&2
  else
    rm -rf "$dir"
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start NAME CMD...: runs CMD in the background, stdout to NAME.out, stderr to NAME.log.
start() {
  local name=$1; shift
  "$@" >"$dir/$name.out" 2>"$dir/$name.log" &
  pids+=("$!")
  names+=("$name")
}

# alive: fails (naming the member and showing its log) if a started process has exited.
alive() {
  for i in "${!pids[@]}"; do
    if ! kill -0 "${pids[i]}" 2>/dev/null; then
      echo "local-cluster: ${names[i]} exited; the end of its log ($dir/${names[i]}.log):" >&2
      tail -n 20 "$dir/${names[i]}.log" >&2
      return 1
    fi
  done
}

# wait_for WHAT SECONDS COMMAND...: until COMMAND succeeds, while every member is alive.
wait_for() {
  local what=$1 secs=$2; shift 2
  local deadline=$((SECONDS + secs))
  until "$@"; do
    alive || exit 1
    ((SECONDS < deadline)) || die "timed out after ${secs}s waiting for $what (logs in $dir)"
    sleep 0.3
  done
}

# The JSON field FIELD of the ready line a grm process printed in NAME.out.
ready_field() {
  python3 -c 'import json,sys; print(json.loads(open(sys.argv[1]).readline())[sys.argv[2]])' "$dir/$1.out" "$2"
}
is_ready() { grep -q '"ready"' "$dir/$1.out" 2>/dev/null; }

etcd_client=$(free_port)
etcd_peer=$(free_port)
endpoint=http://127.0.0.1:$etcd_client
start etcd "$etcd" --name grm-local --data-dir "$dir/etcd" \
  --listen-client-urls "$endpoint" --advertise-client-urls "$endpoint" \
  --listen-peer-urls "http://127.0.0.1:$etcd_peer" --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer" \
  --initial-cluster "grm-local=http://127.0.0.1:$etcd_peer"
etcd_healthy() { http_get "$endpoint/health" | grep -q '"health":"true"'; }
wait_for etcd 30 etcd_healthy
echo "local-cluster: etcd at $endpoint"

device=${GRM_LOCAL_DEVICE:-cpu}
# Members listen on free loopback ports (port 0) and register the address they got.
start grm-worker "$grm" worker --model "$models/grm" --role grm --listen 127.0.0.1:0 \
  --metrics-listen 127.0.0.1:0 --etcd "$endpoint" --device "$device"
start meta-worker "$grm" worker --model "$models/meta-rm" --role meta-rm --listen 127.0.0.1:0 \
  --metrics-listen 127.0.0.1:0 --etcd "$endpoint" --device "$device"
start aggregator "$grm" aggregator --listen 127.0.0.1:0 --etcd "$endpoint"
for m in grm-worker meta-worker aggregator; do
  wait_for "$m" 120 is_ready "$m"
  echo "local-cluster: $m at $(ready_field "$m" grpc)"
done

grpc_port=${GRM_LOCAL_GRPC_PORT:-50051}
http_port=${GRM_LOCAL_HTTP_PORT:-8080}
[ "$grpc_port" != 0 ] || grpc_port=$(free_port)
[ "$http_port" != 0 ] || http_port=$(free_port)
start router "$grm" router --listen "127.0.0.1:$grpc_port" --http-listen "127.0.0.1:$http_port" --etcd "$endpoint"
wait_for router 30 is_ready router
# Healthy: the router sees a GRM worker, a meta-RM worker and an aggregator.
sees_all() {
  http_get "http://127.0.0.1:$http_port/health" | python3 -c '
import json, sys
h = json.loads(sys.stdin.read() or "{}")
sys.exit(not all(h.get(k, 0) >= 1 for k in ("grm_workers", "meta_workers", "aggregators")))'
}
wait_for "the router to see every member" 30 sees_all
echo "local-cluster: router at 127.0.0.1:$grpc_port (gRPC), http://127.0.0.1:$http_port (/get_reward, /health, /metrics)"
echo "local-cluster: healthy: $(http_get "http://127.0.0.1:$http_port/health")"

score=("$grm" score --addr "127.0.0.1:$grpc_port" --query "What is 17 * 3?" --response 51 --response 41 --k 4)
if ((smoke)); then
  "${score[@]}"
  exit 0
fi
echo "local-cluster: try: $(printf '%q ' "${score[@]}")"
echo "local-cluster: logs in $dir; Ctrl-C stops everything"
while alive; do sleep 1; done
exit 1
