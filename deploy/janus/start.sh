#!/usr/bin/env bash
# Runs Debian's Janus (apt-get install janus) in the foreground with the configuration in this
# folder: VideoRoom over the HTTP API on http://127.0.0.1:8088/janus. Janus gathers ICE candidates
# on the machine's interfaces (never on loopback), so bind the load tester's peers there too.
#
#   deploy/janus/start.sh
#   sfu-loadtest --target janus --url http://127.0.0.1:8088/janus --bind "$(hostname -I | cut -d" " -f1)" \
#       --watch-process janus ...
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
command -v janus >/dev/null || { echo "janus is not installed: apt-get install -y janus" >&2; exit 1; }
exec janus --configs-folder "$here" --config "$here/janus.jcfg" --disable-colors "$@"
