#!/usr/bin/env bash
# Do reads of a large queue hold back accepts? (issue 12, SQLite.) A queue holding JOBS done jobs (a
# week of retention at a few deliveries a second), the gateway taking signed matching pushes at RATE
# req/s (open loop, bench/loadgen.rs) while `/metrics` is scraped every second (its job counts read
# the whole `jobs` table); prints the 202s' latency and each scrape's time. Run it with and without
# the scrapes (SCRAPE=0) to see what they cost the requests.
#
#   bench/read_stall.sh                          # JOBS=2000000 RATE=500 DURATION=10 SCRAPE=1
#   GATEWAY=/path/to/other/gateway bench/read_stall.sh   # another build, same load
#
# Ports: PORT_BASE + 2 (hooks) and + 3 (admin), PORT_BASE defaulting to 18280, on 127.0.0.1. Every
# process started here is stopped by its PID on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
JOBS=${JOBS:-2000000}
RATE=${RATE:-500}
DURATION=${DURATION:-10}
SCRAPE=${SCRAPE:-1}
PORT_BASE=${PORT_BASE:-18280}
HOOK_PORT=$((PORT_BASE + 2)) ADMIN_PORT=$((PORT_BASE + 3))
PAYLOAD=tests/fixtures/payloads/github/push-tag-deleted-octokit.json
SECRET=bench-secret

cargo build --release --quiet --bin gateway --example loadgen
bin=${CARGO_TARGET_DIR:-target}/release
GATEWAY=${GATEWAY:-$bin/gateway}
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# One rule that matches the push; its target is rate-limited, so the jobs stay pending (nothing is
# delivered: the queue thread's work is the accepts, and the reads).
python3 - "$work" "$PAYLOAD" "$SECRET" <<'PY'
import json, os, sys
work, payload, secret = sys.argv[1:4]
os.makedirs(f"{work}/rules")   # a directory of its own: the gateway watches it, and its log is beside it
open(f"{work}/rules/secret", "w").write(secret)
body = json.loads(open(payload, "rb").read())
body["repository"]["full_name"] = "acme/repo-1"
body["ref"] = "refs/heads/main"
open(f"{work}/hit.json", "wb").write(json.dumps(body, indent=2).encode() + b"\n")
open(f"{work}/rules/rules.hook", "w").write(f'''secret gh = file("{work}/rules/secret")
source acme: github {{ secret gh }}
target ci {{ post "http://127.0.0.1:9/unused" rate 1 per 1h }}
rule "pipeline 1" {{ from acme on "push" when payload contains {{"repository": {{"full_name": "acme/repo-1"}}}} notify ci {{"ref": $.ref}} }}
''')
PY

wait_port() { for _ in $(seq 1 400); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; echo "error: port $1 did not open" >&2; exit 1; }
serve() { "$GATEWAY" serve --rules "$work/rules/rules.hook" --listen 127.0.0.1:$HOOK_PORT --admin 127.0.0.1:$ADMIN_PORT --data "$work/data" 2>> "$work/gateway.log" & gw=$!; pids+=("$gw"); wait_port $HOOK_PORT; wait_port $ADMIN_PORT; }
stop() { kill "$1"; wait "$1" 2>/dev/null || true; }

# The gateway creates its schema; the old jobs are written beside it while it is stopped.
serve; stop "$gw"
python3 - "$work/data/hookgate.db" "$JOBS" <<'PY'
import sqlite3, sys, time
db, n = sys.argv[1], int(sys.argv[2])
c = sqlite3.connect(db)
t0 = int(time.time() * 1000) - n  # one a millisecond until now: all within the retention, none pruned
c.executemany(
    "INSERT INTO jobs (kind, target, state, run_at, created_at, updated_at, source, event, delivery, rule, action,"
    " headers, body, attempts, last_status, last_started_at, last_duration_ms)"
    " VALUES ('notify', 'ci', 'done', ?1, ?1, ?1, 'acme', 'push', ?2, 'pipeline 1', 0, '[]', x'7b7d', 1, 200, ?1, 3)",
    ((t0 + i, f"old-{i}") for i in range(n)))
c.commit()
c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
print("jobs in the queue:", c.execute("SELECT state, count(*) FROM jobs GROUP BY state").fetchall())
c.close()
PY
serve
echo "queue: $(curl -sf http://127.0.0.1:$ADMIN_PORT/status | python3 -c 'import json,sys; print(json.load(sys.stdin)["queue"])' | cut -c1-80)"

scrapes=()
if [ "$SCRAPE" = 1 ]; then
  (
    end=$((SECONDS + DURATION))
    while [ $SECONDS -lt $end ]; do
      curl -s -o /dev/null -w '%{time_total}\n' http://127.0.0.1:$ADMIN_PORT/metrics
      sleep 1
    done
  ) > "$work/scrapes" &
  scrapes=($!); pids+=("${scrapes[0]}")
fi
out=$("$bin/examples/loadgen" --url http://127.0.0.1:$HOOK_PORT/hook/acme --body "$work/hit.json" --secret "$SECRET" --duration "$DURATION" --rate "$RATE")
[ "$SCRAPE" = 1 ] && wait "${scrapes[0]}"
python3 - "$out" "$work/scrapes" "$JOBS" "$RATE" "$SCRAPE" <<'PY'
import json, os, sys
out, scrapes, jobs, rate, scrape = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
d = json.loads(out)
r = d["response_us"]
print(f"{int(jobs):,} done jobs, {rate} req/s offered, scrapes {'on' if scrape == '1' else 'off'}: "
      f"{d['by_status']} answered; 202 latency p50 {r['p50']/1000:.1f} ms, p99 {r['p99']/1000:.1f} ms, max {r['max']/1000:.1f} ms")
if os.path.exists(scrapes):
    t = sorted(float(x) for x in open(scrapes) if x.strip())
    if t:
        print(f"/metrics: {len(t)} scrapes, median {t[len(t)//2]*1000:.0f} ms, max {t[-1]*1000:.0f} ms")
PY
