#!/usr/bin/env bash
# Starts two independent local clusters, "a" and "b", and links them by federation: each has its
# own etcd, two SFU nodes (node-1 is its federation gateway), its own control plane, its own
# API key, its own mesh CA and its own federation CA (certificates in .federation/). Maps one
# room on both sides, then prints one line per node, each side's key and secret, and the
# mapping. Ctrl-C stops everything.
#
#   deploy/federation.sh                  # a/node-1: http://127.0.0.1:7101 ... b/node-2: :7202
#   ROOM=joint deploy/federation.sh       # the room mapped (same name on both sides)
#   PROFILE=debug deploy/federation.sh    # debug builds (faster to build, slower to run)
#   EXTRA_KEYS=lt:SECRET deploy/federation.sh  # every node also takes this key (one load-test
#                                         # run publishing on A and subscribing on B, see
#                                         # BENCHMARKS.md "Federation")
#   GATEWAYS=2 deploy/federation.sh       # each side also runs node-3, a second gateway (on
#                                         # standby until the first goes; each side dials both
#                                         # of the other's; deploy/bench/federation-failover.sh)
#   GATEWAY_LEASE_TTL=5 deploy/federation.sh  # the gateways' registry lease TTL (default 2 s:
#                                         # a killed gateway's successor takes over when the
#                                         # lease expires; see docs/federation.md "Failover")
#
# Open a/node-1 and b/node-2 in a browser with the token each side's key mints
# (SFU_API_KEY=KEY SFU_API_SECRET=SECRET sfuctl token create --identity alice --room joint),
# e.g. http://127.0.0.1:7102/demo.html?room=joint&autojoin=1&publish=1&token=TOKEN: each side sees the
# other's participants as a.example/alice, b.example/bob.
set -euo pipefail
cd "$(dirname "$0")/.."

STATE=${STATE:-.federation}
PROFILE=${PROFILE:-release}
ROOM=${ROOM:-joint}
GATEWAYS=${GATEWAYS:-1}
GATEWAY_LEASE_TTL=${GATEWAY_LEASE_TTL:-2}
case "$GATEWAYS" in 1 | 2) ;; *) echo "GATEWAYS must be 1 or 2" >&2; exit 2 ;; esac
NODES=$([ "$GATEWAYS" = 2 ] && echo "1 2 3" || echo "1 2")

missing=()
command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
command -v protoc >/dev/null 2>&1 || missing+=(protobuf-compiler)
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
[ -f /usr/include/gstreamer-1.0/gst/app/app.h ] ||
  missing+=(libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev gstreamer1.0-plugins-base)
compgen -G "/usr/lib/*/gstreamer-1.0/libgstmatroska.so" >/dev/null || missing+=(gstreamer1.0-plugins-good)
compgen -G "/usr/lib/*/gstreamer-1.0/libgstvideoparsersbad.so" >/dev/null || missing+=(gstreamer1.0-plugins-bad)
if ((${#missing[@]})); then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

if [ "$PROFILE" = release ]; then
  cargo build --release --locked -p sfu-node -p sfu-control
else
  cargo build --locked -p sfu-node -p sfu-control
fi
BIN=target/$PROFILE
mkdir -p "$STATE/logs"

pids=()
stop() {
  trap - INT TERM EXIT
  echo
  echo "stopping..."
  for p in "${pids[@]}"; do kill -INT "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  echo "stopped; logs are in $STATE/logs"
  exit 0
}
trap stop INT TERM EXIT

wait_tcp() {
  for _ in $(seq 1 150); do
    (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listens on 127.0.0.1:$1; see $STATE/logs" >&2
  return 1
}

# Ports of side s (1: a, 2: b): HTTP 7s0n, media UDP 7s1n, relay 7s2n, federation 7s31 (and
# 7s33 for node-3, the second gateway), control 7s90, etcd 24s10/24s11.
declare -A secret
for s in 1 2; do
  side=$([ "$s" = 1 ] && echo a || echo b)
  peer=$([ "$s" = 1 ] && echo b || echo a)
  peer_s=$((3 - s))
  base=$((7000 + 100 * s))
  etcd_client=$((24000 + 100 * s + 10))
  dir="$STATE/$side"
  mkdir -p "$dir"
  # Each side's secret is kept across runs (as its certificates are).
  [ -f "$dir/secret" ] || head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$dir/secret"
  secret[$side]=$(cat "$dir/secret")
  "$BIN/sfu-node" certs --dir "$dir/mesh" --nodes "$(echo "$NODES" | sed 's/\([0-9]\)/node-\1/g; s/ /,/g')" >/dev/null
  "$BIN/sfu-node" certs --dir "$dir/fed" --nodes "$side.example" >/dev/null
  peer_addrs="\"127.0.0.1:$((7000 + 100 * peer_s + 31))\""
  [ "$GATEWAYS" = 2 ] && peer_addrs="$peer_addrs, \"127.0.0.1:$((7000 + 100 * peer_s + 33))\""
  for g in 1 3; do
    cat >"$dir/gateway-$g.toml" <<TOML
[cluster]
lease_ttl_secs = $GATEWAY_LEASE_TTL

[federation]
name = "$side.example"
bind = "127.0.0.1:$((base + 30 + g))"
cert = "$dir/fed/$side.example.pem"
key = "$dir/fed/$side.example.key"

[[federation.peers]]
name = "$peer.example"
addrs = [$peer_addrs]
ca = "$STATE/$peer/fed/ca.pem"
TOML
  done
  etcd --name "$side" --data-dir "$dir/etcd" \
    --listen-client-urls "http://127.0.0.1:$etcd_client" --advertise-client-urls "http://127.0.0.1:$etcd_client" \
    --listen-peer-urls "http://127.0.0.1:$((etcd_client + 1))" \
    --initial-advertise-peer-urls "http://127.0.0.1:$((etcd_client + 1))" \
    --initial-cluster "$side=http://127.0.0.1:$((etcd_client + 1))" >"$STATE/logs/$side-etcd.log" 2>&1 &
  pids+=($!)
done

# The peer's federation CA must exist before a gateway starts: both sides' certificates are
# made above, then the nodes start.
for s in 1 2; do
  side=$([ "$s" = 1 ] && echo a || echo b)
  base=$((7000 + 100 * s))
  etcd_client=$((24000 + 100 * s + 10))
  dir="$STATE/$side"
  wait_tcp "$etcd_client"
  for n in $NODES; do
    config=()
    [ "$n" != 2 ] && config=(--config "$dir/gateway-$n.toml")
    "$BIN/sfu-node" "${config[@]}" --keys "${side}key:${secret[$side]}${EXTRA_KEYS:+,$EXTRA_KEYS}" --node-id "node-$n" \
      --etcd "http://127.0.0.1:$etcd_client" --certs-dir "$dir/mesh" \
      --bind "127.0.0.1:$((base + n))" --udp-port "$((base + 10 + n))" --workers 1 \
      --relay-bind "127.0.0.1:$((base + 20 + n))" --node-ip 127.0.0.1 \
      --recordings-dir "$dir/recordings/node-$n" \
      >"$STATE/logs/$side-node-$n.log" 2>&1 &
    pids+=($!)
    echo "$!" >"$STATE/$side-node-$n.pid"
  done
  "$BIN/sfu-control" --keys "${side}key:${secret[$side]}" --etcd "http://127.0.0.1:$etcd_client" \
    --bind "127.0.0.1:$((base + 90))" >"$STATE/logs/$side-control.log" 2>&1 &
  pids+=($!)
done

for s in 1 2; do
  for n in $NODES; do wait_tcp $((7000 + 100 * s + n)); done
done

# Each side maps its room to the other's: the room crosses once both have.
for s in 1 2; do
  side=$([ "$s" = 1 ] && echo a || echo b)
  peer=$([ "$s" = 1 ] && echo b || echo a)
  token=$(SFU_API_KEY="${side}key" SFU_API_SECRET="${secret[$side]}" "$BIN/sfuctl" token create --admin)
  curl -fsS -X PUT -H "Authorization: Bearer $token" -H "Content-Type: application/json" \
    -d "{\"peer\":\"$peer.example\",\"peer_room\":\"$ROOM\"}" \
    "http://127.0.0.1:$((7000 + 100 * s + 1))/admin/federation/rooms/$ROOM" >/dev/null
done
token=$(SFU_API_KEY=akey SFU_API_SECRET="${secret[a]}" "$BIN/sfuctl" token create --admin)
# Whether the room is agreed, as A's active gateway (the one linked) sees it.
agreed() {
  for g in 1 3; do
    [ "$g" = 3 ] && [ "$GATEWAYS" = 1 ] && continue
    curl -fsS -H "Authorization: Bearer $token" "http://127.0.0.1:710$g/admin/federation/rooms" 2>/dev/null |
      grep -q '"active":true' && return 0
  done
  return 1
}
for _ in $(seq 1 100); do
  agreed && break
  sleep 0.1
done

for side in a b; do
  s=$([ "$side" = a ] && echo 1 || echo 2)
  for n in $NODES; do echo "$side/node-$n: http://127.0.0.1:$((7000 + 100 * s + n))"; done
done
echo "a/keys: akey ${secret[a]}"
echo "b/keys: bkey ${secret[b]}"
if agreed; then
  echo "mapped: a/$ROOM <-> b/$ROOM"
else
  echo "mapping not agreed yet (see $STATE/logs/a-node-1.log)"
fi
echo "Ctrl-C stops both clusters."
while true; do
  wait -n "${pids[@]}" 2>/dev/null || true
  alive=()
  for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive+=("$p"); done
  ((${#alive[@]})) || break
  pids=("${alive[@]}")
done
