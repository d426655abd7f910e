#!/usr/bin/env bash
# What the load tester itself costs: CPU per received packet and memory per simulated peer, of
# full and light receivers. A release node (one media worker) on loopback pinned to core 0, the
# load tester pinned to core 1, `loadtest/scenarios/one-to-many.toml` (one 1.5 Mbps + 48 kbps
# publisher, N subscribers). BENCHMARKS.md, "The load tester's own cost".
#
#   cargo build --release -p sfu-node -p sfu-loadtest
#   deploy/bench/loadtest-cost.sh wall N full|light [RUNS]     # CPU time and RSS, from /proc
#   deploy/bench/loadtest-cost.sh callgrind N full|light       # instructions, under callgrind
#   deploy/bench/loadtest-cost.sh perf N full|light            # where the CPU time goes
#
# `wall` prints the load tester's own report figures (CPU per received packet, KB per peer) and
# what it measured (loss, latency), RUNS times. `callgrind` runs the load tester under callgrind
# with instrumentation on for 20 s once media flows and prints instructions per received packet
# (packets: what the node forwarded to subscribers meanwhile, from its metrics). `perf` samples the load tester (user and kernel)
# for 15 s with `perf record -e cpu-clock` and prints the top symbols.
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
out_packets() {
  curl -s "http://127.0.0.1:$PORT/metrics" | awk '/^sfu_packets_out_total/ {s += $2} END {print s}'
}
loadtest() { # prefix, extra flags...
  local prefix=$1
  shift
  $prefix "$B/sfu-loadtest" --scenario "$ROOT/loadtest/scenarios/one-to-many.toml" \
    --target sfu --url "http://127.0.0.1:$PORT" --room "lt$RANDOM" --subscribers "$N" $LIGHT \
    --quiet "$@"
}

case "$MODE" in
wall)
  for r in $(seq "$RUNS"); do
    start_node
    J="$OUT/wall-$KIND-$N-$(date +%H%M%S).json"
    loadtest "taskset -c 1" --watch-pid "$NODE" --json "$J" >"${J%.json}.txt" 2>&1
    stop_node
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
  # Packets received in the window: what the node forwarded to subscribers (no loss on
  # loopback; the report's loss says so).
  P0=$(out_packets)
  callgrind_control -i on "$PID" >/dev/null
  sleep 20
  callgrind_control -d "$PID" >/dev/null
  P=$(($(out_packets) - P0))
  # The run goes on to its end, so that its report says whether the receivers kept up under
  # valgrind (loss): packets they dropped would make the figure per packet too low.
  wait "$LT"
  stop_node
  D=$(ls "$F".* | head -1)
  T=$(callgrind_annotate "$D" 2>/dev/null | grep "PROGRAM TOTALS" | awk '{print $1}' | tr -d ,)
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
