#!/usr/bin/env bash
# Memory an audience member costs a node: starts a node (one worker, pinned to core 0), joins
# one publisher and N audience members with the load tester (pinned to core 1), and prints the
# node's RSS before and at its peak, per member. BENCHMARKS.md, "Large rooms".
#
#   loadtest/scripts/memory-per-member.sh 1000            # audio and 96 kbps video
#   VIDEO_KBPS=0 loadtest/scripts/memory-per-member.sh 1000
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${1:-1000}
VIDEO_KBPS=${VIDEO_KBPS:-96}
cargo build --release --locked -p sfu-node -p sfu-loadtest
B=target/release
SFU_LOG=warn taskset -c 0 "$B/sfu-node" --workers 1 --bind 127.0.0.1:7880 --node-ip 127.0.0.1 \
  >/dev/null 2>&1 &
node=$!
trap 'kill $node 2>/dev/null || true' EXIT
sleep 1.5
before=$(awk '/VmRSS/ {print $2}' "/proc/$node/status")
taskset -c 1 "$B/sfu-loadtest" --target sfu --url http://127.0.0.1:7880 --room memory \
  --publishers 1 --subscribers "$N" --video-kbps "$VIDEO_KBPS" --fps 10 --audio-kbps 24 --ptime 60 \
  --join-rate 50 --warmup 5 --duration 10 --quiet --watch-pid "$node" >/dev/null &
tester=$!
peak=0
while kill -0 "$tester" 2>/dev/null; do
  rss=$(awk '/VmRSS/ {print $2}' "/proc/$node/status")
  ((rss > peak)) && peak=$rss
  sleep 1
done
echo "members=$N rss_before_kb=$before rss_peak_kb=$peak kb_per_member=$(((peak - before) / (N + 1)))"
