#!/usr/bin/env bash
# Failover of a federation gateway that is killed (SIGKILL: no lease revoked, no connection
# closed), measured with real processes: deploy/federation.sh with GATEWAYS=2 (two gateways per
# side), sfu-loadtest publishing on A's node-2 and subscribing on B's node-2, then A's active
# gateway is killed and B's gateways' counter of datagrams from a.example is polled every 50 ms
# until it grows again (media crossing the link once more), and A's other gateway's metrics
# until it is linked. The killed gateway is started again (on standby) before the next kill,
# so the kills alternate between A's two gateways. Prints one line per kill. See
# BENCHMARKS.md "Federation".
#
#   deploy/bench/federation-failover.sh            # debug builds, 3 kills, gateway lease 2 s
#   KILLS=5 PROFILE=release GATEWAY_LEASE_TTL=5 deploy/bench/federation-failover.sh
set -euo pipefail
cd "$(dirname "$0")/../.."

PROFILE=${PROFILE:-debug}
KILLS=${KILLS:-3}
STATE=${STATE:-.federation-failover}
SECRET=lt-$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
BIN=target/$PROFILE
rm -rf "$STATE"
mkdir -p "$STATE"

cargo build $([ "$PROFILE" = release ] && echo --release) --locked -p sfu-loadtest >/dev/null
export GATEWAY_LEASE_TTL=${GATEWAY_LEASE_TTL:-2}
STATE=$STATE GATEWAYS=2 PROFILE=$PROFILE EXTRA_KEYS="lt:$SECRET" deploy/federation.sh \
  >"$STATE/federation.out" 2>&1 &
fed=$!
lt=""
restarted=()
cleanup() {
  [ -n "$lt" ] && kill "$lt" 2>/dev/null || true
  for p in "${restarted[@]}"; do kill -INT "$p" 2>/dev/null || true; done
  kill -TERM "$fed" 2>/dev/null || true # (a background script ignores SIGINT)
  wait "$fed" 2>/dev/null || true
}
trap cleanup EXIT
for _ in $(seq 1 1800); do
  grep -q "Ctrl-C" "$STATE/federation.out" 2>/dev/null && break
  kill -0 "$fed" 2>/dev/null || { cat "$STATE/federation.out"; exit 1; }
  sleep 0.5
done
grep -E "^(a|b)/node|mapped" "$STATE/federation.out"

# A counter of a node's metrics (0 if absent or the node is down).
metric() {
  curl -fsS -m 1 "http://127.0.0.1:$1/metrics" 2>/dev/null |
    awk -v s="$2" 'index($0, s) == 1 { v += $NF } END { printf "%d\n", v }'
}
# Datagrams from a.example received by B's gateways together.
from_a() { echo $(($(metric 7201 'sfu_federation_datagrams_in_total{peer="a.example"}') + $(metric 7203 'sfu_federation_datagrams_in_total{peer="a.example"}'))); }
now() { date +%s.%N; }

"$BIN/sfu-loadtest" --target sfu --url http://127.0.0.1:7102 --subscriber-url http://127.0.0.1:7202 \
  --room joint --publishers 1 --subscribers 1 --video-kbps 500 --warmup 2 --duration $((40 * KILLS + 30)) \
  --api-key lt --api-secret "$SECRET" >"$STATE/loadtest.out" 2>&1 &
lt=$!

killed=()
for k in $(seq 1 "$KILLS"); do
  # Media crossing: the counter grows over a second.
  for _ in $(seq 1 60); do
    v=$(from_a); sleep 1
    [ "$(from_a)" -gt $((v + 20)) ] && break
  done
  # A's active gateway: the one linked (of those not killed yet).
  active=""
  for g in 1 3; do
    [ "$(metric 710$g 'sfu_federation_linked{peer="b.example"}')" = 1 ] && active=$g
  done
  [ -n "$active" ] || { echo "no linked gateway on A"; exit 1; }
  pid=$(cat "$STATE/a-node-$active.pid")
  t0=$(now)
  kill -KILL "$pid"
  killed+=("$active")
  sleep 0.3
  base=$(from_a)
  link="" media=""
  while :; do
    t=$(now)
    el=$(echo "$t - $t0" | bc)
    [ -z "$link" ] && [ "$(metric 710$((4 - active)) 'sfu_federation_linked{peer="b.example"}')" = 1 ] && link=$el
    [ -z "$media" ] && [ "$(from_a)" -gt $((base + 20)) ] && media=$el
    [ -n "$link" ] && [ -n "$media" ] && break
    (($(echo "$el > 30" | bc))) && break
    sleep 0.05
  done
  printf 'kill %d (a/node-%s): a/node-%s linked %.2f s, media from A crossing to B again %.2f s after SIGKILL\n' \
    "$k" "$active" "$((4 - active))" "${link:-99}" "${media:-99}"
  # The killed gateway comes back (same command line), on standby, for the next kill.
  [ "$k" = "$KILLS" ] && break
  side_dir="$STATE/a"
  # (A kill prints "Killed" on stderr: expected.)
  "$BIN/sfu-node" --config "$side_dir/gateway-$active.toml" --keys "akey:$(cat "$side_dir/secret"),lt:$SECRET" \
    --node-id "node-$active" --etcd http://127.0.0.1:24110 --certs-dir "$side_dir/mesh" \
    --bind "127.0.0.1:$((7100 + active))" --udp-port "$((7110 + active))" --workers 1 \
    --relay-bind "127.0.0.1:$((7120 + active))" --node-ip 127.0.0.1 \
    --recordings-dir "$side_dir/recordings/node-$active" >"$STATE/a-node-$active.restart.log" 2>&1 &
  echo "$!" >"$STATE/a-node-$active.pid"
  restarted+=("$!")
  sleep 8
done
