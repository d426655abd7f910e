#!/usr/bin/env bash
# Starts a local cluster on this machine: etcd and three SFU nodes on loopback, each with its
# own ports, linked over QUIC with certificates from a development CA (created on first run
# in .cluster/certs), and the control plane (sfu-control) on port 7900. Prints each node's URL;
# Ctrl-C stops everything.
#
#   deploy/local-cluster.sh            # nodes on http://127.0.0.1:7001, :7002, :7003
#   NODES=5 deploy/local-cluster.sh    # more nodes
set -euo pipefail
cd "$(dirname "$0")/.."

NODES=${NODES:-3}
STATE=${STATE:-.cluster}
ETCD_CLIENT=${ETCD_CLIENT:-23790}
ETCD_PEER=${ETCD_PEER:-23800}

missing=()
command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
command -v protoc >/dev/null 2>&1 || missing+=(protobuf-compiler)
# Recordings: GStreamer to build against and its plugins that write the files.
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

cargo build --release --locked -p sfu-node -p sfu-control
BIN=target/release/sfu-node
mkdir -p "$STATE/logs"

ids=()
for i in $(seq 1 "$NODES"); do ids+=("node-$i"); done
"$BIN" certs --dir "$STATE/certs" --nodes "$(IFS=,; echo "${ids[*]}")" >/dev/null

pids=()
stop() {
  trap - INT TERM EXIT
  echo
  echo "stopping..."
  # SIGINT stops a node at once (SIGTERM would drain it first, waiting for participants).
  for p in "${pids[@]}"; do kill -INT "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  echo "stopped; logs are in $STATE/logs"
  exit 0
}
trap stop INT TERM EXIT

etcd --name local --data-dir "$STATE/etcd" \
  --listen-client-urls "http://127.0.0.1:$ETCD_CLIENT" --advertise-client-urls "http://127.0.0.1:$ETCD_CLIENT" \
  --listen-peer-urls "http://127.0.0.1:$ETCD_PEER" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER" \
  --initial-cluster "local=http://127.0.0.1:$ETCD_PEER" >"$STATE/logs/etcd.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do
  (echo >"/dev/tcp/127.0.0.1/$ETCD_CLIENT") 2>/dev/null && break
  sleep 0.1
done

for i in $(seq 1 "$NODES"); do
  "$BIN" --dev --node-id "node-$i" --etcd "http://127.0.0.1:$ETCD_CLIENT" --certs-dir "$STATE/certs" \
    --bind "127.0.0.1:$((7000 + i))" --udp-port "$((7100 + 10 * i))" --workers 1 \
    --relay-bind "127.0.0.1:$((7200 + i))" --node-ip 127.0.0.1 \
    --recordings-dir "$STATE/recordings/node-$i" \
    >"$STATE/logs/node-$i.log" 2>&1 &
  pids+=($!)
done

target/release/sfu-control --dev --etcd "http://127.0.0.1:$ETCD_CLIENT" --bind 127.0.0.1:7900 \
  >"$STATE/logs/control.log" 2>&1 &
pids+=($!)

for i in $(seq 1 "$NODES"); do
  for _ in $(seq 1 100); do
    curl -fs "http://127.0.0.1:$((7000 + i))/readyz" >/dev/null 2>&1 && break
    sleep 0.1
  done
done

echo "etcd:    http://127.0.0.1:$ETCD_CLIENT"
echo "control: http://127.0.0.1:7900 (gRPC; sfuctl talks to it; POST /v1/join for browsers)"
for i in $(seq 1 "$NODES"); do
  echo "node-$i: http://127.0.0.1:$((7000 + i))"
done
echo "Open two node URLs in a browser, join the same room on each, and see each other;"
echo "or open http://127.0.0.1:7001/?control=http://127.0.0.1:7900 to be placed by the control plane."
echo "Operate it: target/release/sfuctl nodes list, sfuctl rooms list, sfuctl node drain node-2 ..."
echo "Ctrl-C stops the cluster."
# A drained node exits on its own; the rest of the cluster keeps running.
while true; do
  wait -n "${pids[@]}" 2>/dev/null || true
  alive=()
  for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive+=("$p"); done
  ((${#alive[@]})) || break
  if ((${#alive[@]} < ${#pids[@]})); then
    echo "a process of the cluster exited (a drained node does); see $STATE/logs"
  fi
  pids=("${alive[@]}")
done
