#!/usr/bin/env bash
# Builds the meeting app into app/dist when it is missing or older than its sources (run.sh and
# test.sh call this): installs Node.js and npm with apt if they are missing, then `npm ci` and
# `npm run build` (esbuild). Versions are pinned in package.json and package-lock.json.
set -euo pipefail
cd "$(dirname "$0")"

stale=0
if [ ! -f dist/index.html ]; then
  stale=1
elif [ -n "$(find src public package.json package-lock.json build.mjs -newer dist/index.html -print -quit)" ]; then
  stale=1
fi
[ "$stale" -eq 1 ] || exit 0

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends nodejs npm
fi
if [ ! -d node_modules/esbuild ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund --loglevel=error
fi
npm run build --silent
