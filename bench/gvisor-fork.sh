#!/usr/bin/env bash
# Times `warren fork -n 1` of a running gVisor sandbox: a daemon of its own, one sandbox
# with a background `sleep` and a file in its home, N forks, each copy removed after.
#
#   bash bench/gvisor-fork.sh [BIN] [N]     (root; runsc installed)
#
# Prints the median, min and max wall time of the fork command, in ms.
set -euo pipefail
BIN=${1:-target/release/warren}
N=${2:-8}
R=$(mktemp -d)
export WARREN_RUN_DIR=$R/run WARREN_DATA_DIR=$R/data WARREN_SOCKET=$R/run/warren.sock WARREN_LOG=off
"$BIN" serve > "$R/serve.log" 2>&1 &
SP=$!
cleanup() {
  kill "$SP" 2>/dev/null || true
  wait "$SP" 2>/dev/null || true
  rm -rf "$R"
}
trap cleanup EXIT
for _ in $(seq 50); do [ -S "$WARREN_SOCKET" ] && break; sleep 0.1; done
id=$("$BIN" create --isolation gvisor --memory 256M | tail -1)
"$BIN" exec -d "$id" -- sleep 1000 > /dev/null
"$BIN" exec "$id" -- sh -c 'echo hi > /root/f'
times=()
for _ in $(seq "$N"); do
  s=$(date +%s%N)
  out=$("$BIN" fork -n 1 "$id")
  e=$(date +%s%N)
  times+=($(( (e - s) / 1000000 )))
  for c in $(echo "$out" | grep -oE '^[0-9a-f]{16}'); do "$BIN" rm "$c" > /dev/null; done
done
"$BIN" rm "$id" > /dev/null
printf '%s\n' "${times[@]}" | sort -n |
  awk '{a[NR]=$1} END {print "fork -n 1 (ms): median", a[int((NR+1)/2)], "min", a[1], "max", a[NR], "n", NR}'
