#!/usr/bin/env bash
# Where the time of a cold start and of an exec goes: WARREN_TRACE phases and perf profiles.
#
#   bash bench/profile.sh [WARREN_BINARY] [RUNS]
#
# 1. bench/phases.py: the CLI's and the helper's phase marks (WARREN_TRACE=1), wall time.
# 2. perf record (software clock: this VM has no hardware counters) of RUNS
#    `warren run --rm -- true`, following every child (helper, agent), user and kernel;
#    prints the top symbols by process and the kernel/user split.
# 3. perf record of a `warren serve` (and its helpers and agents) while RUNS*4 API execs
#    of `true` run in one sandbox: where an exec round trip spends CPU.
# Root; writes only under a temp dir, removed at the end. Needs linux-perf.
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
warren=${1:-$here/target/release/warren}
runs=${2:-50}
command -v perf >/dev/null || apt-get install -y -qq linux-perf >/dev/null
tmp=$(mktemp -d /tmp/wprof-XXXXXX)
trap 'rm -rf "$tmp"' EXIT
export WARREN_RUN_DIR=$tmp/run WARREN_DATA_DIR=$tmp/data

echo "== phases of warren run --rm -- true ($runs runs, WARREN_TRACE=1)"
python3 "$here/bench/phases.py" --runs "$runs" --warren "$warren"

report() {
  echo "-- by process (comm), share of samples"
  perf report -i "$1" --no-children --sort comm --stdio 2>/dev/null | grep -v '^#' | grep -v '^$' | head -8
  echo "-- by object (kernel vs user code)"
  perf report -i "$1" --no-children --sort dso --stdio 2>/dev/null | grep -v '^#' | grep -v '^$' | head -8
  echo "-- top symbols"
  perf report -i "$1" --no-children --sort comm,sym --stdio 2>/dev/null | grep -v '^#' | grep -v '^$' | head -"${2:-30}"
}

echo
echo "== perf: $runs x warren run --rm -- true"
perf record -q -e cpu-clock -F 20000 -o "$tmp/cold.data" -- \
  sh -c "for i in \$(seq $runs); do '$warren' run --rm -- true; done" >/dev/null 2>&1
report "$tmp/cold.data" 40

echo
echo "== perf: warren serve during $((runs * 4)) API execs of true"
perf record -q -e cpu-clock -F 20000 -o "$tmp/exec.data" -- \
  "$warren" serve --socket "$tmp/run/warren.sock" >/dev/null 2>&1 &
perfpid=$!
for _ in $(seq 500); do [ -S "$tmp/run/warren.sock" ] && break; sleep 0.02; done
HERE=$here/bench python3 - "$tmp/run/warren.sock" $((runs * 4)) <<'EOF'
import importlib.util, json, os, sys, time
spec = importlib.util.spec_from_file_location("api", os.path.join(os.environ["HERE"], "api.py"))
api = importlib.util.module_from_spec(spec); spec.loader.exec_module(api)
conn = api.Api(sys.argv[1])
sid = conn.call("POST", "/v1/sandboxes", {"home_volume": False})["id"]
t = []
for _ in range(int(sys.argv[2])):
    t0 = time.perf_counter()
    conn.call("POST", f"/v1/sandboxes/{sid}/exec", {"command": {"argv": ["true"]}})
    t.append((time.perf_counter() - t0) * 1000)
conn.call("DELETE", f"/v1/sandboxes/{sid}")
t.sort()
print(f"exec round trip: median {t[len(t)//2]:.2f} ms over {len(t)}")
EOF
# Stop the daemon (perf's child), then perf ends and writes its data.
daemon=$(cat /proc/$perfpid/task/*/children | awk '{print $1}')
kill -TERM "$daemon"
wait $perfpid 2>/dev/null || true
report "$tmp/exec.data" 40
echo
"$warren" doctor
