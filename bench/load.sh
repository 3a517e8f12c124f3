#!/usr/bin/env bash
# Load benchmark on loopback (issue 12): the gateway with 1,000 Concourse-style rules (RULES) against a minimal
# hyper server that only checks the HMAC-SHA256 and parses the JSON, in the same run, with the same
# 7.3 KB signed GitHub push. Servers are pinned to core 1; the load generator (bench/loadgen.rs) and the
# delivery sink (bench/sink.rs) to core 0. Prints one table: req/s, ratio to the minimal server, the
# server's CPU per request by thread, and latencies.
#
#   bench/load.sh                                   # every case, DURATION=10 (seconds), CONNECTIONS=32
#   CASES="unwatched delivered latency" bench/load.sh   # a subset (the minimal server always runs, first and last)
#   PROFILE_GATEWAY="perf record -e cpu-clock -g -o gw.data --" CASES=delivered bench/load.sh   # one case
#
# Cases (default: all). Rules are containment filters, `payload contains {"repository": {"full_name":
# "acme/repo-N"}, "ref": "refs/heads/main"}`, unless the case is eq-*; logging is the default (info)
# unless the case says warn.
#   minimal-wrk   the minimal server driven by wrk instead of loadgen (checks the generator is not the
#                 bottleneck; skipped when wrk is not installed)
#   unwatched     push to a repository no rule watches
#   unwatched-warn   the same with RUST_LOG=warn (not in the default set)
#   branch        push to another branch of a watched repository
#   unwatched-nolog, branch-nolog   the same two with the delivery log off (`--deliveries-max-records 0`;
#                 not in the default set)
#   match-info    push that matches one rule; the target is rate-limited, so nothing is delivered; only
#   match-warn    the 202s count. The same with RUST_LOG=warn.
#   delivered     matching push, delivered to the live sink; the run ends when the queue is drained and
#                 all the gateway's CPU until then is charged to the requests
#   latency       receipt-to-delivery latency at a fixed rate: RATE, or half of `delivered`'s rate
#   eq-unwatched, eq-branch, eq-match   the first three with `==` rules instead of containment
#
# Other knobs: RULES (how many rules, default 1000; the watched repository of `branch` and `hit` is the
# one in the middle, `acme/repo-<RULES/2>`), GATEWAY_FLAGS (more `gateway serve` flags for every case, e.g. "--record-bodies none"), REPEAT (rounds of all the cases, taken in turn; the table shows medians and ranges),
# RATE (latency case, req/s), SINK_CONCURRENCY (the sink target's `concurrency`; default: the
# target default), ACTION (the matching rules' action), DRAIN_TIMEOUT (seconds, default 600), KEEP=1 (keep
# the work directory: rules, payloads, gateway logs, the sink's arrivals), PROFILE_GATEWAY (a command
# prefix for the gateway), GATEWAY (the gateway binary; default this tree's release build), PORT_BASE (default 18180). Every process started here is stopped by its PID on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10}
DURATION=${DURATION%s}
CONNECTIONS=${CONNECTIONS:-32}
CASES=${CASES:-minimal-wrk unwatched branch match-info match-warn delivered latency eq-unwatched eq-branch eq-match}
DRAIN_TIMEOUT=${DRAIN_TIMEOUT:-600}
REPEAT=${REPEAT:-1}
RULES=${RULES:-1000}
[[ "$RULES" =~ ^[1-9][0-9]*$ ]] || { echo "error: RULES must be a positive number of rules, not \`$RULES\`" >&2; exit 2; }
PAYLOAD=tests/fixtures/payloads/github/push-tag-deleted-octokit.json
SECRET=bench-secret
SERVER_CORE=1
CLIENT_CORE=0
PORT_BASE=${PORT_BASE:-18180}   # the ports used: PORT_BASE + 1, 2, 3 and 10, on 127.0.0.1
MINIMAL_PORT=$((PORT_BASE + 1)) HOOK_PORT=$((PORT_BASE + 2)) ADMIN_PORT=$((PORT_BASE + 3)) SINK_PORT=$((PORT_BASE + 10))
[ -f "$PAYLOAD" ] || { echo "error: $PAYLOAD is missing" >&2; exit 1; }
for c in $CASES; do
  case $c in
    minimal-wrk|unwatched|unwatched-warn|unwatched-nolog|branch|branch-nolog|match-info|match-warn|delivered|latency|eq-unwatched|eq-branch|eq-match) ;;
    *) echo "error: unknown case \`$c\`" >&2
       echo "  help: CASES takes: minimal-wrk unwatched unwatched-warn unwatched-nolog branch branch-nolog match-info match-warn delivered latency eq-unwatched eq-branch eq-match" >&2
       exit 2 ;;
  esac
done
has_case() { [[ " $CASES " == *" $1 "* ]]; }
if has_case latency && [ -z "${RATE:-}" ] && ! has_case delivered; then
  echo "error: the latency case needs RATE or the delivered case" >&2
  echo "  help: add \`delivered\` to CASES, or set RATE (requests per second)" >&2
  exit 2
fi
if has_case minimal-wrk && ! command -v wrk >/dev/null; then
  echo "note: wrk is not installed (apt-get install -y wrk): skipping minimal-wrk" >&2
  CASES=${CASES//minimal-wrk/}
fi

cargo build --release --quiet --bin gateway --example minimal-server --example loadgen --example sink
bin=${CARGO_TARGET_DIR:-target}/release
GATEWAY=${GATEWAY:-$bin/gateway}   # another build of the gateway, driven by this tree's load generator (bench/ab.sh)
# From here on this script and everything it starts run on the client core, except the servers, which
# are started with `taskset -c $SERVER_CORE`: polling and bookkeeping never take the server's core.
taskset -cp $CLIENT_CORE $$ >/dev/null
uptime_start=$(uptime)
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  if [ -n "${KEEP:-}" ]; then echo "work directory kept: $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

python3 - "$work" "$PAYLOAD" "$SECRET" "${SINK_CONCURRENCY:-}" "$SINK_PORT" "$RULES" <<'PY'
import hashlib, hmac, json, os, sys
work, payload, secret, concurrency, sink_port, count = sys.argv[1:7]
count = int(count)
watched = f"acme/repo-{count // 2}"   # the repository `branch` and `hit` push to: one rule watches it
raw = open(payload, "rb").read()
# The matching rules' action: a Flux-style notify with a small rendered body, one delivery per request.
ACTION = os.environ.get("ACTION", 'notify ci {"Kind": "git", "Source": {"URL": $.repository.ssh_url, "Branch": "main"}}')
# The rules and their secret in a directory of their own, as a ConfigMap mounts them: the gateway
# watches the directories of what its rules read, and the logs written beside them would wake it.
os.makedirs(f"{work}/rules")
open(f"{work}/rules/secret", "w").write(secret)
targets = {
    # Rate-limited to one delivery an hour: the matching run measures acceptance alone.
    "held": 'target ci { post "http://127.0.0.1:9/unused" rate 1 per 1h }',
    "sink": f'target ci {{ post "http://127.0.0.1:{sink_port}/deliver"'
            + (f" concurrency {concurrency}" if concurrency else "") + " }",
}
conditions = {
    "contains": lambda i: f'payload contains {{"repository": {{"full_name": "acme/repo-{i}"}}, "ref": "refs/heads/main"}}',
    "eq": lambda i: f'$.repository.full_name == "acme/repo-{i}" and $.ref == "refs/heads/main"',
}
for shape, cond in conditions.items():
    for tname, target in targets.items():
        rules = [f'secret gh = file("{work}/rules/secret")', 'source acme: github { secret gh }', target]
        for i in range(count):
            rules.append(f'rule "pipeline {i}" {{ from acme on "push" when {cond(i)} {ACTION} }}')
        open(f"{work}/rules/{shape}-{tname}.hook", "w").write("\n".join(rules) + "\n")

def variant(name, full_name, ref):
    body = json.loads(raw)
    if full_name:
        body["repository"]["full_name"] = full_name
        body["ref"] = ref
    data = json.dumps(body, indent=2).encode() + b"\n"   # the fixture's own layout: same bytes when unchanged
    open(f"{work}/{name}.json", "wb").write(data)
    sig = hmac.new(secret.encode(), data, hashlib.sha256).hexdigest()
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
  wrk.headers["X-GitHub-Delivery"] = "wrk-{name}-" .. tostring(os.time()) .. "-" .. n
  return wrk.format(nil)
end
''')
variant("unwatched", None, None)                              # Codertocat/Hello-World, a tag deletion
variant("branch", watched, "refs/heads/feature/login")  # a watched repository, another branch
variant("hit", watched, "refs/heads/main")
PY

wait_port() { for _ in $(seq 1 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; echo "error: port $1 did not open" >&2; exit 1; }
# Starts "$@" in the background and records its PID in $started.
start() { "$@" & started=$!; pids+=("$started"); }
# Stops PID $1 (SIGTERM, then SIGKILL after 20 s) and forgets it.
stop() {
  kill "$1" 2>/dev/null || true
  for _ in $(seq 1 200); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
  local keep=() p; for p in "${pids[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done; pids=("${keep[@]}")
}
# Nanoseconds each thread of process $1 has spent on a CPU, and runnable but waiting for one, so far:
# "tid name run wait" lines (from schedstat).
threads() {
  local t; for t in /proc/"$1"/task/*; do
    echo "${t##*/} $(tr ' ' _ < "$t/comm" 2>/dev/null || echo gone) $(cut -d' ' -f1,2 < "$t/schedstat" 2>/dev/null || echo 0 0)"
  done
}
# The PID whose threads to account: the gateway itself, or the profiler's child when profiling.
server_pid() {
  if [ -n "${PROFILE_GATEWAY:-}" ]; then
    for _ in $(seq 1 100); do local c; c=$(cat /proc/"$1"/task/*/children 2>/dev/null | awk '{print $1; exit}'); [ -n "$c" ] && { echo "$c"; return; }; sleep 0.05; done
  fi
  echo "$1"
}
loadgen() { taskset -c $CLIENT_CORE "$bin/examples/loadgen" --url "$1" --body "$work/$2.json" --secret "$SECRET" --connections "$CONNECTIONS" --duration "$DURATION" "${@:3}"; }
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }
queue_busy() { curl -sf http://127.0.0.1:$ADMIN_PORT/status | json 'd["queue"]["pending"] + d["queue"]["inflight"]'; }
# result CASE key=value... : one line of results.jsonl (values are JSON).
result() { local c=$1; shift; python3 -c 'import json,sys; print(json.dumps({"case": sys.argv[1], "round": int(sys.argv[2]), **{k: json.loads(v) for k, v in (a.split("=", 1) for a in sys.argv[3:])}}))' "$c" "$round" "$@" >> "$work/results.jsonl"; }

# The minimal server, driven by loadgen: run at the start of each round and once more at the end; the
# ratios are to the median of those runs, and their spread shows how much the machine's load drifted
# meanwhile. In the first round it is also driven by wrk, to show loadgen is not the bottleneck.
minimal_case() { # CASE
  start taskset -c $SERVER_CORE "$bin/examples/minimal-server" 127.0.0.1:$MINIMAL_PORT "$SECRET"
  m=$started; wait_port $MINIMAL_PORT
  threads $m > "$work/cpu-$1-$round-0"
  out=$(loadgen http://127.0.0.1:$MINIMAL_PORT/hook/acme unwatched)
  threads $m > "$work/cpu-$1-$round-1"
  result "$1" "load=$out" "before=\"$work/cpu-$1-$round-0\"" "after=\"$work/cpu-$1-$round-1\"" 'count="200"'
  if [ "$1" = minimal ] && [ "$round" = 1 ] && has_case minimal-wrk; then
    threads $m > "$work/cpu-minimal-wrk-0"
    times > "$work/times0"
    wrk_out=$(taskset -c $CLIENT_CORE wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" -s "$work/unwatched.lua" http://127.0.0.1:$MINIMAL_PORT/hook/acme)
    times > "$work/times1"
    threads $m > "$work/cpu-minimal-wrk-1"
    # CPU of wrk: the children's user + system time from `times` (which counts waited-for descendants).
    client_ns=$(python3 -c 'import re,sys
def ns(line): return sum(int(m) * 60e9 + float(s) * 1e9 for m, s in re.findall(r"(\d+)m([\d.]+)s", line))
print(int(ns(sys.argv[2]) - ns(sys.argv[1])))' "$(tail -n1 "$work/times0")" "$(tail -n1 "$work/times1")")
    n=$(awk '/requests in/ {print $1}' <<<"$wrk_out"); secs=$(awk '/requests in/ {sub(/s,$/, "", $4); print $4}' <<<"$wrk_out")
    non2xx=$(awk '/Non-2xx/ {print $NF}' <<<"$wrk_out"); non2xx=${non2xx:-0}
    result minimal-wrk "load={\"answered\": $n, \"by_status\": {\"200\": $((n - non2xx))}, \"elapsed_s\": $secs, \"errors\": 0, \"client_cpu_ns\": $client_ns}" \
      "before=\"$work/cpu-minimal-wrk-0\"" "after=\"$work/cpu-minimal-wrk-1\"" 'count="200"'
  fi
  stop $m
}

# One gateway per case, on a fresh queue, its log lines in a file as a service manager would keep them.
gateway() { # CASE RULES-FILE LOG-LEVEL [MORE-FLAGS]
  rm -rf "$work/data"
  # shellcheck disable=SC2086 # MORE-FLAGS is a list of words
  start env RUST_LOG="$3" ${PROFILE_GATEWAY:-} taskset -c $SERVER_CORE "$GATEWAY" serve --rules "$work/rules/$2" \
    --listen 127.0.0.1:$HOOK_PORT --admin 127.0.0.1:$ADMIN_PORT --data "$work/data" ${4:-} ${GATEWAY_FLAGS:-} 2> "$work/gateway-$1-$round.log"
  gw=$started; wait_ready
  gwp=$(server_pid $gw)
  quiet $gwp
}
# Waits until the gateway says it is ready. Its ports are bound before the rules load (connections
# wait in the backlog meanwhile), so an open port does not mean it serves yet: with RULES=100000 the
# load (about a second of CPU) would be charged to the case's requests.
wait_ready() {
  for _ in $(seq 1 1200); do curl -sf -o /dev/null http://127.0.0.1:$ADMIN_PORT/readyz && return 0; sleep 0.05; done
  echo "error: the gateway was not ready within 60 s" >&2; exit 1
}
# Then until process $1 has been idle for a moment (not a clock tick of CPU in 250 ms; at most 30 s):
# once ready, it stores the text of the rules it serves (for explaining past deliveries).
quiet() {
  local before now
  before=$(cpu_ticks "$1")
  for _ in $(seq 1 120); do
    sleep 0.25
    now=$(cpu_ticks "$1")
    [ $((now - before)) -le 0 ] && return 0
    before=$now
  done
  echo "warning: the gateway did not go idle within 30 s of starting" >&2
}
# The CPU process $1 has used so far, in clock ticks (10 ms).
cpu_ticks() { awk '{ s += $14 + $15 } END { print s }' /proc/"$1"/task/*/stat 2>/dev/null; }
# Waits until the sink has seen $1 distinct deliveries and the queue has nothing pending or in flight.
drain() {
  local deadline=$((SECONDS + DRAIN_TIMEOUT))
  while [ $SECONDS -lt $deadline ]; do
    if [ "$(curl -sf http://127.0.0.1:$SINK_PORT/count)" -ge "$1" ] && [ "$(queue_busy)" = 0 ]; then return 0; fi
    sleep 0.05
  done
  echo "warning: the queue was not drained within ${DRAIN_TIMEOUT}s" >&2
}

# A case's gateway log (tens of MB at info) is kept only with KEEP=1.
drop_log() { [ -n "${KEEP:-}" ] || rm -f "$work/gateway-$1-$round.log"; }
closed_case() { # CASE RULES PAYLOAD LOG-LEVEL COUNTED-STATUS [GATEWAY-FLAGS]
  has_case "$1" || return 0
  gateway "$1" "$2" "$4" "${6:-}"
  threads $gwp > "$work/cpu-$1-$round-0"
  out=$(loadgen http://127.0.0.1:$HOOK_PORT/hook/acme "$3")
  threads $gwp > "$work/cpu-$1-$round-1"
  stop $gw
  result "$1" "load=$out" "before=\"$work/cpu-$1-$round-0\"" "after=\"$work/cpu-$1-$round-1\"" "count=\"$5\"" "log=\"$4\"" \
    "log_lines=$(wc -l < "$work/gateway-$1-$round.log")"
  drop_log "$1"
}

delivered_case() { # CASE [loadgen args]: load, then wait until every 202 is delivered
  start taskset -c $CLIENT_CORE "$bin/examples/sink" 127.0.0.1:$SINK_PORT
  sink=$started; wait_port $SINK_PORT
  gateway "$1" contains-sink.hook info
  threads $gwp > "$work/cpu-$1-$round-0"
  out=$(loadgen http://127.0.0.1:$HOOK_PORT/hook/acme hit "${@:2}")
  accepted=$(json 'd["by_status"].get("202", 0)' <<<"$out")
  drain "$accepted"
  threads $gwp > "$work/cpu-$1-$round-1"
  sunk=$(curl -sf http://127.0.0.1:$SINK_PORT/stats)
  [ -z "${KEEP:-}" ] || curl -sf http://127.0.0.1:$SINK_PORT/dump > "$work/arrivals-$1-$round.txt"
  status=$(curl -sf http://127.0.0.1:$ADMIN_PORT/status)
  stop $gw; stop $sink
  result "$1" "load=$out" "before=\"$work/cpu-$1-$round-0\"" "after=\"$work/cpu-$1-$round-1\"" 'count="202"' 'log="info"' \
    "sink=$sunk" "status=$status" "log_lines=$(wc -l < "$work/gateway-$1-$round.log")"
  drop_log "$1"
}
# The cases, REPEAT rounds of them in turn (each round starts with the minimal server), then the minimal
# server once more.
for round in $(seq 1 "$REPEAT"); do
  minimal_case minimal
  closed_case unwatched contains-held.hook unwatched info 200
  closed_case unwatched-warn contains-held.hook unwatched warn 200
  closed_case branch contains-held.hook branch info 200
  closed_case unwatched-nolog contains-held.hook unwatched info 200 "--deliveries-max-records 0"
  closed_case branch-nolog contains-held.hook branch info 200 "--deliveries-max-records 0"
  closed_case match-info contains-held.hook hit info 202
  closed_case match-warn contains-held.hook hit warn 202
  closed_case eq-unwatched eq-held.hook unwatched info 200
  closed_case eq-branch eq-held.hook branch info 200
  closed_case eq-match eq-held.hook hit info 202
  if has_case delivered; then delivered_case delivered; fi
  if has_case latency; then
    rate=${RATE:-}
    if [ -z "$rate" ]; then   # half of this round's accepted-and-delivered rate
      rate=$(tail -n1 "$work/results.jsonl" | json '"%.0f" % (d["load"]["by_status"].get("202", 0) / ((d["sink"]["last_ns"] - d["load"]["start_ns"]) / 1e9) / 2)')
    fi
    delivered_case latency --rate "$rate"
  fi
done
round=$REPEAT
minimal_case minimal-end

uptime_now=$(uptime)
python3 bench/load_report.py "$work/results.jsonl" "$DURATION" "$CONNECTIONS" "$(wc -c < "$PAYLOAD")" "$uptime_start" "$uptime_now" "$RULES"
