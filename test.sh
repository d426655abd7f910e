#!/usr/bin/env bash
# Runs every test of the workspace. On a fresh Debian machine it first installs what the tests
# use: Chromium (end-to-end tests), protoc (etcd/gRPC code generation), etcd (cluster tests),
# Node.js and playwright-core (to drive Chromium), GStreamer and ffmpeg (recordings). Extra
# arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")"

missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v protoc >/dev/null 2>&1 || missing+=(protobuf-compiler)
# etcd-client compiles against protobuf's well-known types (descriptor.proto, struct.proto).
[ -f /usr/include/google/protobuf/descriptor.proto ] || missing+=(libprotobuf-dev)
command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
# Recording: GStreamer to build against (gstreamer-rs finds it with pkg-config) and its plugins
# that write the files; ffmpeg's ffprobe checks them.
command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
[ -f /usr/include/gstreamer-1.0/gst/gst.h ] || missing+=(libgstreamer1.0-dev)
[ -f /usr/include/gstreamer-1.0/gst/app/app.h ] || missing+=(libgstreamer-plugins-base1.0-dev gstreamer1.0-plugins-base)
compgen -G "/usr/lib/*/gstreamer-1.0/libgstmatroska.so" >/dev/null || missing+=(gstreamer1.0-plugins-good)
compgen -G "/usr/lib/*/gstreamer-1.0/libgstvideoparsersbad.so" >/dev/null || missing+=(gstreamer1.0-plugins-bad)
command -v ffprobe >/dev/null 2>&1 || missing+=(ffmpeg)
# LiveKit's Python SDK test: a venv (Debian's python3 makes one only with python3-venv).
python3 -c 'import ensurepip' >/dev/null 2>&1 || missing+=(python3 python3-venv)
# Live streaming: a real RTMP server to stream to (nginx with its RTMP module; the test runs
# its own nginx on a loopback port, not the system service).
[ -f /usr/lib/nginx/modules/ngx_rtmp_module.so ] || missing+=(nginx libnginx-mod-rtmp)
if ((${#missing[@]})); then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing: ${missing[*]}"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# Again when a package the tests use is missing (one added since the last install).
if [ ! -d node/tests/browser/node_modules/playwright-core ] ||
  [ ! -d node/tests/browser/node_modules/livekit-server-sdk ] ||
  [ ! -d node/tests/browser/node_modules/livekit-client ]; then
  npm ci --prefix node/tests/browser --no-audit --no-fund --loglevel=error
fi

# The meeting app (node/tests/meeting_app.rs serves app/dist), rebuilt when its sources changed.
app/build.sh

# LiveKit's Python SDK (its wheel carries its native library), pinned, in a venv of its own.
if [ ! -x target/lk-venv/bin/python ] ||
  ! target/lk-venv/bin/python -c 'import livekit.rtc' >/dev/null 2>&1; then
  python3 -m venv target/lk-venv
  target/lk-venv/bin/pip install -q livekit==1.2.0
fi

# A real S3-compatible server for the recording upload test (node/tests/recording/): moto's
# S3 and its server (flask), pinned, in a venv of its own.
if [ ! -x target/s3-venv/bin/moto_server ] ||
  ! target/s3-venv/bin/python -c 'import moto.server, boto3' >/dev/null 2>&1; then
  python3 -m venv target/s3-venv
  target/s3-venv/bin/pip install -q 'moto[s3]==5.1.18' flask==3.1.2 flask-cors==6.0.1
fi

# A fresh clone builds once: incremental compilation's caches (GBs for the workspace's test
# binaries) would only take disk space.
if [ "${CI:-}" = true ]; then
  export CARGO_INCREMENTAL=0
fi

# --no-fail-fast: report every failing test binary, not only the first.
if (($#)); then
  exec cargo test --workspace --locked --no-fail-fast "$@"
fi
# Tests with known intermittent bugs run on their own after everything else, with one more
# attempt each (failing twice fails the run), until they have shown themselves steady:
# - federation: a federated track sometimes stayed silent (two causes fixed on 2026-12-03, see
#   docs/federation.md; kept here until it has passed many more runs).
# - live_stream: left on 2026-12-04 (its stall was a failed RTMP destination's, fixed in
#   68df567) and back the same day: in a fresh-clone CI run the stream played, but ffmpeg
#   decoding nginx's FLV recording reported pairs of video frames on one millisecond ("non
#   monotonically increasing dts ... 35 >= 35", 38, 41, ... 3 ms apart), a burst of frames at
#   the stream's start not yet understood (docs/recording.md, "Not yet").
# - meeting_app: failed in 3 of 16 runs on 2026-12-04, with UDP GSO on (2 of 8, one a
#   fresh-clone CI run: both times an audience member's raised hand, a LiveKit data packet
#   livekit-client sends after negotiating her publisher connection on demand, did not reach
#   the host) and off (1 of 8, which assertion not kept); not understood yet. Later that day
#   34 of 35 runs passed (10 of 10 on a quiet machine, 24 of 25 with both cores busy, `yes`); the
#   one failure: alice's chat message shown on neither page, her own included: its sending had
#   not finished in her client (and the node logged no refused data packet at debug level).
quarantined=(
  "federation two_clusters_share_a_mapped_room"
  "live_stream a_room_streams_live_to_rtmp_and_hls_and_a_dead_destination_fails_alone"
  "meeting_app meeting_app_joins_plays_video_chats_and_embeds"
)
skips=()
for q in "${quarantined[@]}"; do
  skips+=(--skip "${q#* }")
done
status=0
cargo test --workspace --locked --no-fail-fast -- "${skips[@]}" || status=$?
for q in "${quarantined[@]}"; do
  # Only the quarantined test: the binary's others ran above. --workspace, as above, so the
  # binary built there is run (with -p the crate's features differ and it is built again).
  binary=${q%% *} name=${q#* }
  if ! cargo test --workspace --locked --test "$binary" -- --exact "$name"; then
    echo "$q: failed once (known intermittent bug, see test.sh); trying again"
    cargo test --workspace --locked --test "$binary" -- --exact "$name" || status=1
  fi
done
exit "$status"
