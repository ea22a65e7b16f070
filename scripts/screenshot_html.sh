#!/usr/bin/env bash
# Screenshot an HTML file (e.g. an offline skeleton playback) with headless Chromium.
#   scripts/screenshot_html.sh PAGE.html OUT.png [WIDTH HEIGHT]
# Needs Debian's chromium (apt-get install -y chromium) or $CHROMIUM pointing at a Chromium/Chrome binary.
# No network is used: the flags turn off background requests, and the page itself must be self-contained.
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 PAGE.html OUT.png [WIDTH HEIGHT]" >&2
  exit 2
fi
page=$(realpath "$1")
out=$(realpath -m "$2")
width=${3:-1200}
height=${4:-800}
browser=${CHROMIUM:-$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)}
if [ -z "$browser" ]; then
  echo "$0: no chromium found (apt-get install -y chromium, or set CHROMIUM)" >&2
  exit 3
fi
[ -f "$page" ] || { echo "$0: $page: not found" >&2; exit 2; }
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
rm -f "$out"
# --virtual-time-budget lets the page's scripts (plotly drawing its WebGL scenes) finish before the capture.
timeout 120 "$browser" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --user-data-dir="$profile" --screenshot="$out" --window-size="$width,$height" \
  --virtual-time-budget=5000 "file://$page" >/dev/null 2>&1 || true
if [ ! -s "$out" ]; then
  echo "$0: chromium wrote no screenshot for $page" >&2
  exit 1
fi
echo "$out"
