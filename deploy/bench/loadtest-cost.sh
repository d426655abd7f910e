#!/usr/bin/env bash
# What the load tester itself costs: CPU per received packet and memory per simulated peer, of
# full and light receivers. A release node (one media worker) on loopback pinned to core 0, the
# load tester pinned to core 1, `loadtest/scenarios/one-to-many.toml` (one 1.5 Mbps + 48 kbps
# publisher, N subscribers). BENCHMARKS.md, "The load tester's own cost".
#
#   cargo build --release -p sfu-node -p sfu-loadtest
#   deploy/bench/loadtest-cost.sh wall N full|light [RUNS]     # CPU time and RSS, from /proc
#   deploy/bench/loadtest-cost.sh margin N1,N2 full|light [RUNS] # the same at the margin
#   deploy/bench/loadtest-cost.sh callgrind N full|light       # instructions, under callgrind
#   deploy/bench/loadtest-cost.sh perf N full|light            # where the CPU time goes
#
# `wall` prints the load tester's own report figures (CPU per received packet, KB per peer) and
# what it measured (loss, latency), RUNS times. `callgrind` runs the load tester under callgrind
# with instrumentation on for 20 s once media flows and prints instructions per received packet
# (packets: the calls of the receivers' `Reception::on_packet` in the same dump). `perf` samples the load tester (user and kernel)
# for 15 s with `perf record -e cpu-clock` and prints the top symbols. `margin` runs `wall` at N1
# and at N2 receivers, one after the other, and prints what the N2 - N1 receivers added: CPU per
# packet they received and RSS per peer, without what does not grow with the receivers (the
# publisher's thread, the runtime, buffers per thread), which `wall` spreads over them.
set -u
MODE=$1 N=$2 KIND=$3 RUNS=${4:-1}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
B=${BIN:-$ROOT/target/release}
OUT=${OUT:-/tmp/loadtest-cost}
PORT=${PORT:-18140}
UDP=${UDP:-18340}
mkdir -p "$OUT"
LIGHT=""
[ "$KIND" = light ] && LIGHT="--light"
[ "$KIND" = light-no-gro ] && LIGHT="--light --no-gro"

start_node() {
  SFU_LOG=warn taskset -c 0 "$B/sfu-node" --dev --workers 1 --bind "127.0.0.1:$PORT" \
    --node-ip 127.0.0.1 --udp-port "$UDP" --recordings-dir "$OUT/rec" >"$OUT/node.log" 2>&1 &
  NODE=$!
  sleep 2
}
stop_node() {
  kill "$NODE" 2>/dev/null
  wait "$NODE" 2>/dev/null
}
loadtest() { # prefix, extra flags...
  local prefix=$1
  shift
  $prefix "$B/sfu-loadtest" --scenario "$ROOT/loadtest/scenarios/one-to-many.toml" \
    --target sfu --url "http://127.0.0.1:$PORT" --room "lt$RANDOM" --subscribers "$N" $LIGHT \
    --quiet "$@"
}

wall_run() { # N: runs once, leaves the report's path in $J
  start_node
  J="$OUT/wall-$KIND-$1-$(date +%H%M%S).json"
  N=$1 loadtest "taskset -c 1" --watch-pid "$NODE" --json "$J" >"${J%.json}.txt" 2>&1
  stop_node
}

case "$MODE" in
margin)
  N1=${N%,*} N2=${N#*,}
  for r in $(seq "$RUNS"); do
    wall_run "$N1"
    J1=$J
    wall_run "$N2"
    python3 - "$J1" "$J" "$KIND" <<'EOF'
import json, sys
a, b = (json.load(open(p))[0] for p in sys.argv[1:3])
def cpu_us(r):  # the load tester's CPU over the window, in us
    return r["loadtest_cpu_us_per_packet"] * r["packets_received"]
def rss_kb(r):  # its RSS growth over the run, in KB
    return r["loadtest_kb_per_peer"] * r["peers"]
dn = b["peers"] - a["peers"]
dp = b["packets_received"] - a["packets_received"]
print(f"{sys.argv[3]} at the margin {a['receivers']} -> {b['receivers']}: "
      f"{(cpu_us(b) - cpu_us(a)) / dp:.2f} us/packet, {(rss_kb(b) - rss_kb(a)) / dn:.0f} KB/peer "
      f"(whole: {a['loadtest_cpu_us_per_packet']:.2f} and {b['loadtest_cpu_us_per_packet']:.2f} "
      f"us/packet, {a['loadtest_kb_per_peer']:.0f} and {b['loadtest_kb_per_peer']:.0f} KB/peer; "
      f"served {a['receivers_under_1pct_loss']}/{a['receivers']} and "
      f"{b['receivers_under_1pct_loss']}/{b['receivers']}, others "
      f"{a['others_cpu_percent'] or 0:.0f} and {b['others_cpu_percent'] or 0:.0f} %)")
EOF
  done
  ;;
wall)
  for r in $(seq "$RUNS"); do
    wall_run "$N"
    python3 - "$J" "$KIND" "$N" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))[0]
lt, lat = r["loadtest"] or {}, r["latency_ms"] or {}
print(f"{sys.argv[2]} N={sys.argv[3]}: {r['loadtest_cpu_us_per_packet']:.2f} us/packet, "
      f"{r['loadtest_kb_per_peer']:.0f} KB/peer, load tester {lt.get('cpu_percent', 0):.1f} % "
      f"{lt.get('rss_mb', 0):.0f} MB, node {r['sfu']['cpu_percent']:.1f} %, "
      f"others {r['others_cpu_percent'] or 0:.0f} %, received {r['packets_received']}, "
      f"served {r['receivers_under_1pct_loss']}/{r['receivers']}, "
      f"loss video {r['total_video_loss_percent']:.3f} % audio {r['total_audio_loss_percent']:.3f} %, "
      f"latency p50/p99 {lat.get('p50', 0):.1f}/{lat.get('p99', 0):.1f} ms, "
      f"jitter p50 {(r['jitter_ms'] or {}).get('p50', 0):.2f} ms, light {r['light']}")
EOF
  done
  ;;
callgrind)
  start_node
  F="$OUT/cg-$KIND-$N.out"
  rm -f "$F"*
  loadtest "valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file=$F" \
    --join-rate 10 --warmup 3 --duration 60 >"$OUT/cg-$KIND-$N.txt" 2>&1 &
  LT=$!
  # Joining under valgrind is slow: wait for the peers, then for media to settle.
  sleep $((N / 8 + 25))
  PID=$(pgrep -f "callgrind.*sfu-loadtest" | head -1)
  callgrind_control -i on "$PID" >/dev/null
  sleep 20
  callgrind_control -d "$PID" >/dev/null
  # The run goes on to its end, so that its report says whether the receivers kept up under
  # valgrind (loss): packets they dropped would make the figure per packet too low.
  wait "$LT"
  stop_node
  D=$(ls "$F".* | head -1)
  T=$(callgrind_annotate "$D" 2>/dev/null | grep "PROGRAM TOTALS" | awk '{print $1}' | tr -d ,)
  # Packets received in the window: the calls of stats::Reception::on_packet in the dump
  # (every packet a receiver measures, from its header or decrypted, passes there once). Not
  # the node's count between the two commands: valgrind takes them up late, so that window
  # is longer than the dump's (2.8 times as long at N = 40).
  P=$(python3 - "$D" <<'EOF'
import re, sys
names, callee, total = {}, None, 0
for line in open(sys.argv[1], errors="replace"):
    m = re.match(r"c?fn=\((\d+)\)(?: (.*))?", line.rstrip("\n"))
    if m:
        if m.group(2):
            names[m.group(1)] = m.group(2)
        callee = names.get(m.group(1), "") if line.startswith("cfn=") else None
    elif line.startswith("calls=") and callee is not None:
        if callee.endswith("stats::Reception::on_packet"):
            total += int(line.split()[0][6:])
        callee = None
print(total)
EOF
  )
  echo "$KIND N=$N: instructions=$T packets=$P per_packet=$((T / P)) ($D)"
  grep -E "^loss over all" "$OUT/cg-$KIND-$N.txt"
  ;;
perf)
  start_node
  loadtest "taskset -c 1" --join-rate 40 --warmup 3 --duration 30 \
    >"$OUT/perf-$KIND-$N.txt" 2>&1 &
  LT=$!
  sleep $((N / 40 + 12))
  PID=$(pgrep -f "$B/sfu-loadtest" | head -1)
  perf record -e cpu-clock -F 2000 -g -p "$PID" -o "$OUT/perf-$KIND-$N.data" -- sleep 15 \
    >/dev/null 2>&1
  wait "$LT"
  stop_node
  perf report -i "$OUT/perf-$KIND-$N.data" --no-children --sort sym --stdio 2>/dev/null |
    grep -E "^ +[0-9.]+%" | head -40
  ;;
esac
