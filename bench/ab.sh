#!/usr/bin/env bash
# A/B of this tree's gateway against another commit's, with bench/load.sh, in alternating rounds (the
# machine's speed drifts between minutes; alternating puts both builds through the same drift). Both
# gateways are driven by this tree's load generator, minimal server and sink.
#
#   bench/ab.sh REV                                   # ROUNDS=3 DURATION=5 CASES="unwatched branch"
#   ROUNDS=2 CASES=delivered bench/ab.sh 318eb4a
#
# REV is built in a worktree under target/ab/REV with its own target directory (target/ab/REV-target,
# kept for the next run). Prints one line per build and round: each case's CPU µs per request and
# CPU ratio to the minimal server of the same run. Other bench/load.sh knobs pass through.
set -euo pipefail
cd "$(dirname "$0")/.."
REV=${1:?usage: bench/ab.sh REV}
ROUNDS=${ROUNDS:-3}
export DURATION=${DURATION:-5} CASES=${CASES:-unwatched branch}
sha=$(git rev-parse --short "$REV^{commit}")
root=$PWD/target/ab
tree=$root/$sha
if [ ! -d "$tree" ]; then
  mkdir -p "$root"
  git worktree add --quiet --detach "$tree" "$sha" >/dev/null
fi
(cd "$tree" && CARGO_TARGET_DIR="$root/$sha-target" cargo build --release --quiet --bin gateway)
other=$root/$sha-target/release/gateway

# One line per run: "case = CPU µs / CPU ratio", from the table bench/load.sh prints.
summary() {
  grep -E '^\| ' | tail -n +3 | grep -v 'at the end' |
    awk -F'|' '{gsub(/^ +| +$/, "", $2); gsub(/ /, "", $9); gsub(/ /, "", $10); printf "%s = %s µs / %s | ", $2, $9, $10}'
  echo
}
for round in $(seq "$ROUNDS"); do
  echo -n "this tree, round $round: "
  bench/load.sh 2>&1 | summary
  echo -n "$sha, round $round: "
  GATEWAY=$other bench/load.sh 2>&1 | summary
done
