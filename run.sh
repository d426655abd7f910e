#!/usr/bin/env bash
# Builds and runs one SFU node with its defaults: development mode on loopback (API key
# "devkey", secret "secret"), HTTP and the demo page on http://127.0.0.1:7880, media on UDP 7882
# and up. Arguments go to the node, e.g. `./run.sh --help`, `./run.sh --config node.toml`, or to
# open it to the network: `./run.sh --bind 0.0.0.0:7880 --keys "prod:$(openssl rand -hex 32)"`.
set -euo pipefail
cd "$(dirname "$0")"
if ! command -v protoc >/dev/null 2>&1 || [ ! -f /usr/include/google/protobuf/descriptor.proto ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends protobuf-compiler libprotobuf-dev
fi
exec cargo run --release --locked -p sfu-node -- "$@"
