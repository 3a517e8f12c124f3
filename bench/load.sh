#!/usr/bin/env bash
# Load benchmark on loopback: the gateway (1,000 rules loaded) against a minimal hyper server that only
# checks the HMAC-SHA256 and parses the JSON, both driven by wrk with the same 7.3 KB signed GitHub push.
# Servers are pinned to core 1, wrk to core 0. Prints requests/s and the ratios.
#
#   bench/load.sh                 # DURATION=10s (seconds) CONNECTIONS=32 by default; ACTION=... (see below)
#   PROFILE_GATEWAY="perf record -g -o gw.data --" bench/load.sh   # profile the gateway; SKIP_MISS=1
#
# Needs wrk (apt-get install -y wrk).
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-32}
PAYLOAD=tests/fixtures/payloads/github/push-tag-deleted-octokit.json
SECRET=bench-secret
command -v wrk >/dev/null || { echo "error: wrk is not installed (apt-get install -y wrk)" >&2; exit 1; }
[ -f "$PAYLOAD" ] || { echo "error: $PAYLOAD is missing" >&2; exit 1; }

cargo build --release --quiet --bin gateway --example minimal-server
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

python3 - "$work" "$PAYLOAD" "$SECRET" <<'PY'
import hashlib, hmac, json, os, sys
work, payload, secret = sys.argv[1], sys.argv[2], sys.argv[3].encode()
raw = open(payload, "rb").read()
# The matching rules' action: by default a Flux-style notify with a small rendered body. Set ACTION to
# compare, e.g. ACTION='notify ci' (the original 7 KB payload per job) or a coalescing `queue check`.
ACTION = os.environ.get("ACTION", 'notify ci {"Kind": "git", "Source": {"URL": $.repository.ssh_url, "Branch": "main"}}')
hit = json.loads(raw)
hit["ref"] = "refs/heads/main"
hit["repository"]["full_name"] = "acme/repo-500"
with open(f"{work}/secret", "w") as f:
    f.write(secret.decode())
rules = [f'secret gh = file("{work}/secret")', 'source acme: github { secret gh }',
         'target ci { post "http://127.0.0.1:9/unused" rate 1 per 1h }']
for i in range(1000):
    rules.append(f'rule "pipeline {i}" {{ from acme on "push" when $.repository.full_name == "acme/repo-{i}" '
                 f'and $.ref == "refs/heads/main" ' + ACTION + ' }')
open(f"{work}/rules.hook", "w").write("\n".join(rules) + "\n")
for name, body in [("miss", raw), ("hit", json.dumps(hit, indent=2).encode() + b"\n")]:
    open(f"{work}/{name}.json", "wb").write(body)
    sig = hmac.new(secret, body, hashlib.sha256).hexdigest()
    open(f"{work}/{name}.lua", "w").write(f'''
local f = io.open("{work}/{name}.json", "rb")
wrk.method = "POST"
wrk.body = f:read("*all")
f:close()
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-GitHub-Event"] = "push"
wrk.headers["X-Hub-Signature-256"] = "sha256={sig}"
local n = 0
request = function()
  n = n + 1
  wrk.headers["X-GitHub-Delivery"] = "bench-{name}-" .. tostring(os.time()) .. "-" .. n
  return wrk.format(nil)
end
''')
PY

wait_port() { for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 did not open" >&2; exit 1; }
load() { # URL SCRIPT -> requests/s
  taskset -c 0 wrk -t1 -c"$CONNECTIONS" -d"$DURATION" -s "$2" "$1" | awk '/Requests\/sec/ {print $2}'
}
# CPU time (user + system, in clock ticks) used so far by process $1's threads, grouped by thread name.
threads() { for t in /proc/"$1"/task/*; do echo "$(tr ' ' _ < "$t/comm") $(awk '{print $14 + $15}' "$t/stat")"; done \
  | awk '{n[$1] += $2} END {for (k in n) print k, n[k]}' | sort; }
# CPU microseconds per request by thread name between two `threads` snapshots: BEFORE AFTER REQUESTS.
per_request() { join "$1" "$2" | awk -v n="$3" -v hz="$(getconf CLK_TCK)" \
  '{ us = ($3 - $2) * 1e6 / hz / n; if (us >= 0.5) printf "  %-16s %5.1f us/request\n", $1, us }'; }

taskset -c 1 target/release/examples/minimal-server 127.0.0.1:18181 "$SECRET" & pids+=($!)
wait_port 18181
threads "${pids[-1]}" > "$work/m0"
minimal=$(load http://127.0.0.1:18181/hook/acme "$work/miss.lua")
threads "${pids[-1]}" > "$work/m1"
kill "${pids[-1]}"

RUST_LOG=warn ${PROFILE_GATEWAY:-} taskset -c 1 target/release/gateway serve --rules "$work/rules.hook" --listen 127.0.0.1:18182 \
  --admin 127.0.0.1:18183 --data "$work/data" & pids+=($!)
wait_port 18182
gw=${pids[-1]}
threads "$gw" > "$work/t0"
miss=$([ -n "${SKIP_MISS:-}" ] && echo 1 || load http://127.0.0.1:18182/hook/acme "$work/miss.lua")
threads "$gw" > "$work/t1"
hit=$(load http://127.0.0.1:18182/hook/acme "$work/hit.lua")
threads "$gw" > "$work/t2"
queued=$(curl -s http://127.0.0.1:18183/status | python3 -c 'import json,sys; q=json.load(sys.stdin)["queue"]; print(q["pending"] + q["inflight"] + q["done"] + q["dead"])')
kill "${pids[-1]}"

echo "wrk -t1 -c$CONNECTIONS -d$DURATION, servers on one core, $(wc -c < "$PAYLOAD") byte signed GitHub push, 1000 rules"
printf 'minimal server (HMAC + JSON parse):      %10.0f req/s\n' "$minimal"
printf 'gateway, no rule matches:                %10.0f req/s  (%.2fx)\n' "$miss" "$(echo "$miss / $minimal" | bc -l)"
printf 'gateway, one rule matches (durable 202): %10.0f req/s  (%.2fx)  jobs queued: %s\n' "$hit" "$(echo "$hit / $minimal" | bc -l)" "$queued"
# Where the gateway's core went, per request (skipped when profiling: $! is then the profiler).
if [ -z "${PROFILE_GATEWAY:-}" ]; then
  secs=${DURATION%s}
  echo "minimal server CPU per request:"; per_request "$work/m0" "$work/m1" "$(echo "$minimal * $secs" | bc)"
  [ -n "${SKIP_MISS:-}" ] || { echo "gateway CPU per request, no match:"; per_request "$work/t0" "$work/t1" "$(echo "$miss * $secs" | bc)"; }
  echo "gateway CPU per request, match:"; per_request "$work/t1" "$work/t2" "$(echo "$hit * $secs" | bc)"
fi
