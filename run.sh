#!/usr/bin/env bash
# Builds and runs one SFU node with its defaults: development mode on loopback (API key
# "devkey", secret "secret"), HTTP on http://127.0.0.1:7880 with the meeting app at / (app/,
# built with npm first when needed) and the demo page at /demo.html, media on UDP 7882 and up.
# Arguments go to the node, e.g. `./run.sh --help`, `./run.sh --config node.toml`, or to open it
# to the network: `./run.sh --bind 0.0.0.0:7880 --keys "prod:$(openssl rand -hex 32)"`.
set -euo pipefail
cd "$(dirname "$0")"
# Build needs: protoc (gRPC code), GStreamer with its base and good plugins (recordings).
if ! command -v protoc >/dev/null 2>&1 || [ ! -f /usr/include/google/protobuf/descriptor.proto ] ||
  ! command -v pkg-config >/dev/null 2>&1 || [ ! -f /usr/include/gstreamer-1.0/gst/app/app.h ] ||
  ! compgen -G "/usr/lib/*/gstreamer-1.0/libgstmatroska.so" >/dev/null ||
  ! compgen -G "/usr/lib/*/gstreamer-1.0/libgstvideoparsersbad.so" >/dev/null; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends \
    protobuf-compiler libprotobuf-dev pkg-config libgstreamer1.0-dev \
    libgstreamer-plugins-base1.0-dev gstreamer1.0-plugins-base gstreamer1.0-plugins-good \
    gstreamer1.0-plugins-bad
fi
# The meeting app the node serves at / (Node.js and npm are installed if missing).
app/build.sh
exec cargo run --release --locked -p sfu-node -- "$@"
