#!/usr/bin/env bash
# Instructions a node spends per relayed packet and per packet to a local subscriber, counted
# with callgrind (repeatable on a noisy machine). etcd and two release nodes (one media worker
# each) on loopback; node 1, under callgrind, holds the load tester's publisher (~98 packets/s);
# subscribers (light receivers) on node 2 (relayed) or on node 1 (local). Instrumentation is on
# for 30 s once media flows; the node's metrics are read before and after.
#
#   cargo build --release -p sfu-node -p sfu-loadtest
#   deploy/bench/relay-callgrind.sh NAME SUBSCRIBERS none|relay|local DIRECT(true|false)
#
# Per relayed packet = (total - total of a `none` run) / relayed packets; see BENCHMARKS.md.
set -u
NAME=$1 SUBS=$2 WHERE=$3 DIRECT=$4
B=${BIN:-$(cd "$(dirname "$0")/../.." && pwd)/target/release}
OUT=${OUT:-/tmp/relay-callgrind}
S=$OUT/state
rm -rf "$S"
mkdir -p "$S"
"$B/sfu-node" certs --dir "$S/certs" --nodes node-1,node-2 >/dev/null
etcd --name cg --data-dir "$S/etcd" --listen-client-urls http://127.0.0.1:12479 \
  --advertise-client-urls http://127.0.0.1:12479 --listen-peer-urls http://127.0.0.1:12480 \
  --initial-advertise-peer-urls http://127.0.0.1:12480 \
  --initial-cluster cg=http://127.0.0.1:12480 >"$S/etcd.log" 2>&1 &
ETCD=$!
sleep 2
printf '[cluster]\ndirect_media = %s\n' "$DIRECT" >"$S/node.toml"
start_node() { # index, command prefix
  $2 "$B/sfu-node" --config "$S/node.toml" --dev --node-id "node-$1" \
    --etcd http://127.0.0.1:12479 --certs-dir "$S/certs" --bind "127.0.0.1:1810$1" \
    --udp-port "1830$1" --workers 1 --relay-bind "127.0.0.1:1820$1" --node-ip 127.0.0.1 \
    --recordings-dir "$S/rec$1" >"$S/node$1.log" 2>&1 &
}
start_node 1 "valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file=$OUT/$NAME.out"
start_node 2 ""
sleep 8
SUBURL=http://127.0.0.1:18102
[ "$WHERE" = local ] && SUBURL=http://127.0.0.1:18101
N=$SUBS
[ "$WHERE" = none ] && N=0
"$B/sfu-loadtest" --target sfu --url http://127.0.0.1:18101 --subscriber-url "$SUBURL" \
  --room cgr --publishers 1 --subscribers "$N" --video-kbps 300 --fps 15 --audio-kbps 48 \
  --warmup 3 --duration 60 --light --quiet >"$S/loadtest.log" 2>&1 &
LT=$!
sleep 15
PID=$(pgrep -f "callgrind.*sfu-node" | head -1)
metrics() {
  curl -s http://127.0.0.1:18101/metrics |
    grep -E "^sfu_(packets_in|packets_out|relayed_packets|relay_datagrams_out)"
}
metrics >"$S/m0"
callgrind_control -i on "$PID" >/dev/null
sleep 30
callgrind_control -d "$PID" >/dev/null
metrics >"$S/m1"
callgrind_control -k "$PID" >/dev/null
wait "$LT"
pkill -f "sfu-node --config $S/node.toml"
kill "$ETCD"
sleep 1
T=$(callgrind_annotate "$OUT/$NAME.out.1" 2>/dev/null | grep "PROGRAM TOTALS" | awk '{print $1}' | tr -d ,)
echo "$NAME subscribers=$SUBS where=$WHERE direct=$DIRECT instructions=$T"
paste "$S/m0" "$S/m1" | awk '{printf "  %s %s -> %s (%d)\n", $1, $2, $4, $4-$2}'
grep -E "receivers with|loss over" "$S/loadtest.log" | sed 's/^/  /'
