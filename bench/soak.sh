#!/usr/bin/env bash
# A soak (a script, not CI): a multi-process cluster of the tiny judge (etcd, two GRM workers,
# a meta-RM worker, an aggregator, two routers, a cluster token, the public API behind a bearer
# token) under mixed load (bench/soak_load.py: unary Score, ScoreStream batches, groups split
# over both routers, HTTP /get_reward), for SECONDS, with a fault every PERIOD seconds in turn:
#   kill -9 of a GRM worker and its restart; etcd stopped for 10 s; the meta RM killed for 20 s;
#   a model rolled the documented way (a new directory, the worker restarted on it); a model
#   file written over in place (the worker must stop serving, exit 70, and is restarted on a
#   good copy); kill -9 of a router and its restart.
# Every answer is checked; the figures: requests answered, retried, lost and wrong, and each
# process's RSS and open files over time (resources.csv), summarised in summary.json.
#
# usage: bash bench/soak.sh [SECONDS=3600] [OUT=bench/results/soak-DATE] [PERIOD=120]
# Needs: bash scripts/setup.sh (etcd, .venv-test), and a release build (made if missing; or
# GRM=target/debug/grm, whose engine is optimised too: see Cargo.toml's profiles).
set -euo pipefail
cd "$(dirname "$0")/.."
dur=${1:-3600}
out=${2:-bench/results/soak-$(date -u +%Y%m%d-%H%M)}
period=${3:-120}
bin=${GRM:-target/release/grm}
[ -x "$bin" ] || cargo build --release --locked -p grm-cli
py=.venv-test/bin/python
etcd_bin=$(command -v etcd || echo /usr/bin/etcd)
mkdir -p "$out/logs"
work=$(mktemp -d)
# A copy of the binary: a rebuild during the soak does not change what runs.
cp "$bin" "$work/grm"
grm="$work/grm"
echo "soak:$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')" > "$work/cluster-token"
public=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
echo "$public" > "$work/public-token"
export GRM_CLUSTER_TOKEN_FILE="$work/cluster-token"

port() { "$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
etcd_port=$(port); peer_port=$(port)
declare -A PORT=([w1]=$(port) [w2]=$(port) [meta]=$(port) [agg]=$(port) [r1]=$(port) [r2]=$(port) [h1]=$(port) [h2]=$(port))
etcd_url="http://127.0.0.1:$etcd_port"
fixture=crates/grm-engine/tests/fixtures/tiny-judge
template=tests/data/short-template.toml
declare -A PID MODEL

start_etcd() {
  "$etcd_bin" --name soak --data-dir "$work/etcd" --listen-client-urls "$etcd_url" \
    --advertise-client-urls "$etcd_url" --listen-peer-urls "http://127.0.0.1:$peer_port" \
    --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
    --initial-cluster "soak=http://127.0.0.1:$peer_port" >>"$out/logs/etcd.log" 2>&1 &
  PID[etcd]=$!
}

# A fresh copy of the tiny judge under $work/models/N/tiny-judge (the served name stays).
model_copy() {
  local d="$work/models/$1/tiny-judge"
  mkdir -p "$d"; cp "$fixture"/* "$d/"; echo "$d"
}

start() { # name
  local n=$1 log="$out/logs/$1.log"
  case $n in
    w1|w2) "$grm" worker --model "${MODEL[$n]}" --listen "127.0.0.1:${PORT[$n]}" --etcd "$etcd_url" \
             --lease-ttl-s 3 --threads 1 --kv-blocks 1024 >>"$log" 2>&1 & ;;
    meta) "$grm" worker --role meta-rm --model crates/grm-engine/tests/fixtures/tiny-judge-meta --listen "127.0.0.1:${PORT[meta]}" \
             --etcd "$etcd_url" --lease-ttl-s 3 --threads 1 --kv-blocks 512 >>"$log" 2>&1 & ;;
    agg) "$grm" aggregator --listen "127.0.0.1:${PORT[agg]}" --etcd "$etcd_url" --lease-ttl-s 3 \
             --template "$template" >>"$log" 2>&1 & ;;
    r1|r2) local h=${n/r/h}
           "$grm" router --listen "127.0.0.1:${PORT[$n]}" --http-listen "127.0.0.1:${PORT[$h]}" \
             --advertise "127.0.0.1:${PORT[$n]}" --etcd "$etcd_url" --lease-ttl-s 3 --template "$template" \
             --max-new-tokens 32 --chunk-samples 1 --auth-token-file "$work/public-token" >>"$log" 2>&1 & ;;
  esac
  PID[$n]=$!
  # Ready: the process prints a JSON line with "ready".
  for _ in $(seq 600); do
    grep -q '"ready"' "$log" 2>/dev/null && [ "$(grep -c '"ready"' "$log")" -ge "${READY[$n]:-1}" ] && break
    kill -0 "${PID[$n]}" 2>/dev/null || { echo "$n exited at start; see $log" >&2; return 1; }
    sleep 0.1
  done
  READY[$n]=$(( ${READY[$n]:-1} + 1 ))
}
declare -A READY

cleanup() {
  kill "${LOAD:-0}" 2>/dev/null || true
  for p in "${PID[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

start_etcd
sleep 1
MODEL[w1]=$(model_copy w1-0); MODEL[w2]=$(model_copy w2-0)
for n in w1 w2 meta agg r1 r2; do start $n; done
echo "cluster up: routers 127.0.0.1:${PORT[r1]} 127.0.0.1:${PORT[r2]}; soaking for $dur s, a fault every $period s"

# Resources every 15 s: time, process, pid, RSS (KiB), open files.
echo "t,process,pid,rss_kib,fds" > "$out/resources.csv"

"$py" bench/soak_load.py "127.0.0.1:${PORT[r1]}" "127.0.0.1:${PORT[r2]}" "127.0.0.1:${PORT[h1]}" "$public" \
  > "$out/load.jsonl" 2>"$out/logs/load.log" &
LOAD=$!

faults=0
end=$(( $(date +%s) + dur ))
next=$(( $(date +%s) + period ))
: > "$out/faults.log"
note() { echo "$(date +%s) $*" | tee -a "$out/faults.log"; }
while [ "$(date +%s)" -lt "$end" ]; do
  # The sampler runs in this loop, so that it sees the PIDs of restarted processes.
  for n in "${!PID[@]}"; do
    p=${PID[$n]}
    [ -r "/proc/$p/status" ] || continue
    echo "$(date +%s),$n,$p,$(awk '/^VmRSS/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0),$(ls "/proc/$p/fd" 2>/dev/null | wc -l)" >> "$out/resources.csv"
  done
  if [ "$(date +%s)" -ge "$next" ]; then
    case $(( faults % 6 )) in
      0) note "kill -9 w1"; kill -9 "${PID[w1]}"; wait "${PID[w1]}" 2>/dev/null || true; sleep 5; start w1; note "w1 restarted" ;;
      1) note "etcd stopped"; kill "${PID[etcd]}"; wait "${PID[etcd]}" 2>/dev/null || true; sleep 10; start_etcd; note "etcd started" ;;
      2) note "kill -9 meta"; kill -9 "${PID[meta]}"; wait "${PID[meta]}" 2>/dev/null || true; sleep 20; start meta; note "meta restarted" ;;
      3) new=$(model_copy "w2-$faults"); note "rolling w2 to ${new#$work/}"; kill -TERM "${PID[w2]}"; wait "${PID[w2]}" 2>/dev/null || true
         MODEL[w2]=$new; start w2; note "w2 rolled" ;;
      4) note "w1's model written over in place"
         f="${MODEL[w1]}/model.safetensors"
         "$py" - "$f" <<'EOF'
import sys
p = sys.argv[1]
b = bytearray(open(p, "rb").read())
n = 8 + int.from_bytes(b[:8], "little")
b[n:] = bytes(len(b) - n)  # same size, same header, zero weights
with open(p, "r+b") as f:
    f.write(b)
EOF
         # It stops at its next engine step (the load keeps it busy); a minute at most.
         for _ in $(seq 60); do kill -0 "${PID[w1]}" 2>/dev/null || break; sleep 1; done
         kill -0 "${PID[w1]}" 2>/dev/null && { note "w1 still running a minute later (a failure)"; kill -9 "${PID[w1]}"; }
         code=0; wait "${PID[w1]}" 2>/dev/null || code=$?
         note "w1 exited $code"
         MODEL[w1]=$(model_copy "w1-$faults"); start w1; note "w1 restarted on a good copy" ;;
      5) note "kill -9 r2"; kill -9 "${PID[r2]}"; wait "${PID[r2]}" 2>/dev/null || true; sleep 2; start r2; note "r2 restarted" ;;
    esac
    faults=$(( faults + 1 ))
    next=$(( next + period ))
  fi
  sleep 15
done

kill -TERM "$LOAD"; wait "$LOAD" || true
LOAD=
"$py" - "$out" "$dur" <<'EOF'
import csv, json, sys, collections
out, dur = sys.argv[1], int(sys.argv[2])
lines = [json.loads(l) for l in open(f"{out}/load.jsonl") if l.strip()]
final = lines[-1]
rows = list(csv.DictReader(open(f"{out}/resources.csv")))
by = collections.defaultdict(list)
for r in rows:
    by[(r["process"], r["pid"])].append((int(r["t"]), int(r["rss_kib"] or 0), int(r["fds"] or 0)))
procs = {}
for (name, pid), s in sorted(by.items(), key=lambda kv: kv[1][0][0]):
    s.sort()
    # From a minute after the start (warm), to the end.
    t0 = s[0][0] + 60
    warm = [x for x in s if x[0] >= t0] or s
    procs[f"{name}:{pid}"] = {
        "seconds": s[-1][0] - s[0][0],
        "rss_mib_first": round(warm[0][1] / 1024, 1), "rss_mib_last": round(s[-1][1] / 1024, 1),
        "rss_mib_max": round(max(x[1] for x in s) / 1024, 1),
        "fds_first": warm[0][2], "fds_last": s[-1][2], "fds_max": max(x[2] for x in s),
    }
faults = open(f"{out}/faults.log").read().splitlines()
summary = {"seconds": dur, "counts": final["counts"], "errors": final.get("errors", [])[:20],
           "faults": faults, "processes": procs}
json.dump(summary, open(f"{out}/summary.json", "w"), indent=1)
tot = {k: sum(c[k] for c in final["counts"].values()) for k in ("ok", "retried", "lost", "wrong")}
print(json.dumps({"totals": tot, "counts": final["counts"]}))
for k, v in procs.items():
    print(k, v)
EOF
