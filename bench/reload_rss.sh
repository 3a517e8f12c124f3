#!/usr/bin/env bash
# Memory of `gateway serve` with a large rules file across reloads (issue 12: "reload peak under 2x
# steady"). Starts the release gateway on loopback with 100,000 containment rules (a target per rule,
# as `cargo bench --bench compile -- --emit` writes them), takes its RSS once loaded, then edits the
# file five ways and asks for a reload after each (POST /-/reload), printing the peak RSS of each
# reload (VmHWM, reset before it with /proc/PID/clear_refs) against the steady RSS, and the RSS after.
#
#   bench/reload_rss.sh                 # RULES=containment-100000 (or -shared), PORT_BASE=19300
#
# The peak is read SETTLE seconds (4) after the reload answered: storing the new rules version in the
# delivery log happens after the swap and belongs to the reload. Stops only the gateway it started.
set -euo pipefail
cd "$(dirname "$0")/.."
RULES=${RULES:-containment-100000}
PORT_BASE=${PORT_BASE:-19300}
SETTLE=${SETTLE:-4}
work=$(mktemp -d)
pid=
cleanup() {
  if [[ -n $pid ]]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

cargo build --release --quiet
cargo bench --bench compile --quiet -- --emit "$work/emit" >/dev/null
cp "$work/emit/$RULES.hook" "$work/rules.hook"
admin=127.0.0.1:$((PORT_BASE + 2))
GITHUB_WEBHOOK_SECRET=bench-secret CONCOURSE_TOKEN=bench-token RUST_LOG=warn \
  target/release/gateway serve --rules "$work/rules.hook" --listen 127.0.0.1:$((PORT_BASE + 1)) \
  --admin "$admin" --data "$work/data" 2>"$work/serve.log" &
pid=$!
until curl -sf "http://$admin/readyz" >/dev/null; do
  kill -0 "$pid" 2>/dev/null || { cat "$work/serve.log"; exit 1; }
  sleep 0.2
done
sleep "$SETTLE"
kib() { awk -v f="$1:" '$1 == f {print $2}' "/proc/$pid/status"; }
steady=$(kib VmRSS)
echo "$RULES: steady RSS $((steady / 1024)) MiB (load peak $(($(kib VmHWM) / 1024)) MiB)"

# Each edit is Python over the text `t`.
reload() {
  echo 5 >"/proc/$pid/clear_refs"
  python3 - "$work/rules.hook" "$1" <<'PY'
import sys
path, edit = sys.argv[1], sys.argv[2]
t = open(path).read()
exec(edit)
open(path + ".tmp", "w").write(t)
PY
  mv "$work/rules.hook.tmp" "$work/rules.hook"
  local answer
  answer=$(curl -sf -X POST "http://$admin/-/reload")
  sleep "$SETTLE"
  local peak
  peak=$(kib VmHWM)
  printf '%-32s %s: peak %d MiB, %.2fx steady; RSS after %d MiB\n' "$2" "$answer" \
    $((peak / 1024)) "$(echo "$peak / $steady" | bc -l)" $(($(kib VmRSS) / 1024))
}
reload "t += '# one\n'" "a comment appended"
reload "t += '# two\n'" "a comment appended"
reload "i = t.find('\ntarget '); t = t[:i] + '\ntarget inserted { post \"https://ci.example.com/x?t=\${secret.ci}\" }\nrule \"inserted\" { from org on \"push\" when \$.ref == \"x\" queue check inserted }\n' + t[i:]" \
  "a pipeline inserted at the top"
reload "t = t.replace('refs/heads/main', 'refs/heads/trunk')" "every rule's literal changed"
reload "t = t.replace('ci.example.com', 'ci2.example.com')" "every target's URL changed"
