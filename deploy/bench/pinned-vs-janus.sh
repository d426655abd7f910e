#!/usr/bin/env bash
# Subscribers per core, our node against Janus VideoRoom, side by side (BENCHMARKS.md,
# "Subscribers per core against Janus, pinned"). Each server runs in a network namespace of its
# own (a veth pair: host 10.77.0.1 / node 10.77.0.2, host 10.78.0.1 / Janus 10.78.0.2) pinned to
# core 0; the load tester (light receivers) runs on the host pinned to core 1.
#
#   deploy/bench/pinned-vs-janus.sh setup [rps]     # namespaces (rps: see below)
#   deploy/bench/pinned-vs-janus.sh sfu N           # one point: N subscribers on our node
#   deploy/bench/pinned-vs-janus.sh janus N         # the same on Janus
#   deploy/bench/pinned-vs-janus.sh teardown
#
# `setup rps` steers each veth's receive processing to the receiver's core (receive packet
# steering): without it, the kernel runs the receiving side of every datagram a server sends
# (IP and UDP input, the load tester's socket queue, its wake-up) in the server's own system
# call on core 0, which a server sending to other machines does not pay. Both servers are
# measured the same way. Needs root, release builds of sfu-node and sfu-loadtest, and Janus.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${OUT:-target/bench/pinned}
mkdir -p "$out"

netns() { # name host-side-dev ns-side-dev subnet
  ip netns del "$1" 2>/dev/null || true
  ip link del "$2" 2>/dev/null || true
  ip netns add "$1"
  ip link add "$2" type veth peer name "$3"
  ip link set "$3" netns "$1"
  ip addr add "$4.1/24" dev "$2"
  ip link set "$2" up
  ip netns exec "$1" ip addr add "$4.2/24" dev "$3"
  ip netns exec "$1" ip link set "$3" up
  ip netns exec "$1" ip link set lo up
}

# Prints the process's user and system CPU ticks.
ticks() { awk '{print $14, $15}' "/proc/$1/stat"; }

point() { # kind N
  local kind=$1 n=$2 pid url bind
  if [ "$kind" = sfu ]; then
    ip netns exec sfuns taskset -c 0 ${NODE_BIN:-target/release/sfu-node} ${NODE_DEV---dev} --workers 1 \
      --bind 10.77.0.2:7880 --node-ip 10.77.0.2 >"$out/sfu-$n.log" 2>&1 &
    url=http://10.77.0.2:7880 bind=10.77.0.1
  else
    local conf="$out/janus-conf"
    rm -rf "$conf" && cp -r deploy/janus "$conf"
    sed -i 's/ip = "127.0.0.1"/ip = "10.78.0.2"/' "$conf/janus.transport.http.jcfg"
    ip netns exec janusns taskset -c 0 janus --configs-folder "$conf" \
      --config "$conf/janus.jcfg" --disable-colors >"$out/janus-$n.log" 2>&1 &
    url=http://10.78.0.2:8088/janus bind=10.78.0.1
  fi
  sleep 2
  # The server's PID inside `ip netns exec` (which execs) and `taskset` (which execs too).
  pid=$!
  # The server goes whatever happens to the load tester (it would hold core 0 for the next);
  # the trap runs after this function's locals are gone, so it gets the PID as text.
  trap "kill $pid 2>/dev/null || true" EXIT
  local before after
  before=$(ticks "$pid")
  # Receivers read datagram by datagram, as browsers do (--no-gro): without receive steering the
  # receiving side of every datagram runs on the server's core, so segmented reads would spare
  # our node (which sends GSO runs) a cost that Janus (which sends datagram by datagram) still
  # pays. GRO=on measures with them.
  local gro=--no-gro
  [ "${GRO:-off}" = on ] && gro=""
  taskset -c 1 ${LOADTEST_BIN:-target/release/sfu-loadtest} --scenario loadtest/scenarios/one-to-many.toml \
    --target "$kind" --url "$url" --bind "$bind" --subscribers "$n" --light $gro --quiet ${JOIN_RATE:+--join-rate $JOIN_RATE} \
    --watch-pid "$pid" --json "$out/$kind-$n.json" | tee "$out/$kind-$n.txt"
  after=$(ticks "$pid")
  echo "$kind N=$n server ticks (user system) before: $before after: $after" | tee -a "$out/$kind-$n.txt"
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

case "${1:-}" in
  setup)
    netns sfuns vsfu0 vsfu1 10.77.0
    netns janusns vjan0 vjan1 10.78.0
    if [ "${2:-}" = rps ]; then
      # Packets the servers send are received on core 1 (the load tester's), packets they
      # receive on core 0 (theirs).
      echo 2 >/sys/class/net/vsfu0/queues/rx-0/rps_cpus
      echo 2 >/sys/class/net/vjan0/queues/rx-0/rps_cpus
      ip netns exec sfuns sh -c 'echo 1 >/sys/class/net/vsfu1/queues/rx-0/rps_cpus'
      ip netns exec janusns sh -c 'echo 1 >/sys/class/net/vjan1/queues/rx-0/rps_cpus'
    fi
    ;;
  teardown)
    ip link del vsfu0 2>/dev/null || true
    ip link del vjan0 2>/dev/null || true
    ip netns del sfuns 2>/dev/null || true
    ip netns del janusns 2>/dev/null || true
    ;;
  sfu | janus) point "$1" "$2" ;;
  *) echo "usage: $0 setup [rps] | sfu N | janus N | teardown" >&2; exit 2 ;;
esac
