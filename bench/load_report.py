"""The table of bench/load.sh, from the results file it writes (one JSON object per case and round).

    python3 bench/load_report.py RESULTS.jsonl DURATION CONNECTIONS PAYLOAD-BYTES UPTIME-START UPTIME-END
"""

import json
import statistics
import sys

LABELS = {
    "minimal": "minimal server (HMAC + JSON parse), loadgen",
    "minimal-wrk": "minimal server, wrk",
    "unwatched": "unwatched repository",
    "unwatched-warn": "unwatched repository (RUST_LOG=warn)",
    "branch": "other branch of a watched repository",
    "unwatched-nolog": "unwatched repository, delivery log off",
    "branch-nolog": "other branch, delivery log off",
    "match-info": "match, 202s only (RUST_LOG=info)",
    "match-warn": "match, 202s only (RUST_LOG=warn)",
    "eq-unwatched": "`==` rules: unwatched repository",
    "eq-branch": "`==` rules: other branch",
    "eq-match": "`==` rules: match, 202s only",
    "delivered": "match, accepted and delivered, drained",
    "latency": "match, delivered, fixed rate",
    "minimal-end": "minimal server, loadgen, at the end",
}
GROUPS = ("workers", "queue", "logs", "other")


def thread_cpu(row):
    """Nanoseconds of CPU by thread group between the two snapshots (threads born in between count from 0;
    threads that ended in between are lost, which only tokio's idle blocking threads do)."""

    def read(path):
        out = {}
        for line in open(path):
            tid, name, run, wait = line.split()
            out[tid] = (name, int(run), int(wait))
        return out

    before, after = read(row["before"]), read(row["after"])
    groups = dict.fromkeys(GROUPS, 0)
    waited = 0
    for tid, (name, run, wait) in after.items():
        if name.startswith(("tokio-runtime-w", "tokio-rt-worker")):
            group = "workers"
        else:
            group = {"hookgate-queue": "queue", "hookgate-logs": "logs"}.get(name, "other")
        _, run0, wait0 = before.get(tid, (name, 0, 0))
        groups[group] += run - run0
        waited += wait - wait0
    return groups, waited


def measure(row):
    """req/s, CPU µs per request by group, and notes for one case in one round."""
    load = row["load"]
    counted = load["by_status"].get(row["count"], 0)
    notes = []
    if "sink" in row:
        sink = row["sink"]
        secs = (sink["last_ns"] - load["start_ns"]) / 1e9 if sink["count"] else float("nan")
        notes.append(f'{sink["unique"]}/{counted} delivered in {secs:.1f} s (load {load["elapsed_s"]:.1f} s)')
        if sink["count"] > sink["unique"]:
            notes.append(f'{sink["count"] - sink["unique"]} delivered twice')
        dead = row["status"]["queue"].get("dead")
        if dead:
            notes.append(f"{dead} dead")
        if row["case"] == "latency":
            lat, resp = sink["latency_us"], load["response_us"]
            notes.append(
                f'offered {load["answered"] / load["elapsed_s"]:.0f}/s; receipt to delivery p50 {lat["p50"] / 1e3:.1f} ms, '
                f'p99 {lat["p99"] / 1e3:.1f} ms, max {lat["max"] / 1e3:.1f} ms; 202 p50 {resp["p50"] / 1e3:.2f} ms, '
                f'p99 {resp["p99"] / 1e3:.2f} ms; {load.get("late", 0)} sent late'
            )
    else:
        secs = load["elapsed_s"]
        if "response_us" in load:
            resp = load["response_us"]
            notes.append(f'response p50 {resp["p50"] / 1e3:.2f} ms, p99 {resp["p99"] / 1e3:.2f} ms')
    others = {k: v for k, v in load["by_status"].items() if k != row["count"]}
    if others or load.get("errors"):
        notes.append(f"also {others}, {load.get('errors', 0)} errors")
    if load.get("client_cpu_ns") and load.get("answered"):
        notes.append(
            f'client {load["client_cpu_ns"] / 1e3 / load["answered"]:.1f} µs/request, '
            f'{load["client_cpu_ns"] / 1e9 / load["elapsed_s"]:.0%} of a core'
        )
    if "log_lines" in row:
        notes.append(f'{row["log_lines"]} log lines')
    ran, waited = thread_cpu(row)
    # How much of the server's core it had, and how long its threads were ready to run but another
    # process (or another of its threads) held the core: the first sign of a noisy neighbour.
    notes.append(f"server on CPU {sum(ran.values()) / 1e9 / secs:.0%} of the time, waiting for it {waited / 1e9 / secs:.0%}")
    us = {k: v / 1e3 / counted if counted else 0.0 for k, v in ran.items()}
    return {
        "rps": counted / secs if secs else 0.0,
        "us": us,
        "total": sum(us.values()),
        "notes": "; ".join(notes),
        "round": row["round"],
    }


def main():
    path, duration, connections, size, up0, up1, rules = sys.argv[1:8]
    rows = [json.loads(line) for line in open(path)]
    by_case = {}
    for row in rows:
        by_case.setdefault(row["case"], []).append(measure(row))
    rounds = max(r["round"] for r in rows)

    minimal = by_case["minimal"] + by_case.get("minimal-end", [])
    base = statistics.median(m["rps"] for m in minimal)
    base_cpu = statistics.median(m["total"] for m in minimal)

    print(
        f"\n{connections} connections, {duration} s per case, {rounds} round(s), {size}-byte signed GitHub push, "
        f"{int(rules):,} rules (containment unless `==`), default logging unless stated; servers on core 1, client and "
        f"sink on core 0"
    )
    print(f"uptime at the start: {up0.strip()}\nuptime at the end:   {up1.strip()}")
    runs = ", ".join(f"{m['rps']:,.0f}" for m in minimal)
    print(
        f"ratios are to the minimal server's median: {base:,.0f} req/s and {base_cpu:.1f} µs of CPU per request "
        f"over its {len(minimal)} runs ({runs} req/s)"
    )
    if rounds > 1:
        print("each figure is the median over the rounds, with the range in brackets; notes are the median round's")
    print()
    print("| case | req/s | ratio | workers | queue | logs | other | CPU total | CPU ratio | notes |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")

    def fig(values, fmt):
        mid = fmt(statistics.median(values))
        return mid if len(values) == 1 else f"{mid} [{fmt(min(values))}–{fmt(max(values))}]"

    for case, ms in by_case.items():
        rps = [m["rps"] for m in ms]
        totals = [m["total"] for m in ms]
        middle = sorted(ms, key=lambda m: m["rps"])[(len(ms) - 1) // 2]
        cols = []
        for g in GROUPS:
            vals = [m["us"][g] for m in ms]
            cols.append("—" if statistics.median(vals) < 0.05 else fig(vals, lambda v: f"{v:.1f}"))
        cells = [
            LABELS[case],
            fig(rps, lambda v: f"{v:,.0f}"),
            fig([r / base for r in rps], lambda v: f"{v:.2f}×"),
            *cols,
            fig(totals, lambda v: f"{v:.1f}"),
            fig([base_cpu / t for t in totals], lambda v: f"{v:.2f}×"),
            middle["notes"],
        ]
        print("| " + " | ".join(cells) + " |")

    def paired(case, against, what, goal):
        """`case` against `against`, round by round: req/s and CPU per request as ratios."""
        if case not in by_case or against not in by_case:
            return
        pairs = list(zip(by_case[case], by_case[against]))
        rps_ratio = [a["rps"] / b["rps"] for a, b in pairs]
        cpu_ratio = [b["total"] / a["total"] for a, b in pairs]
        two = lambda v: f"{v:.2f}"  # noqa: E731
        print(
            f"\n{what} in the same round: {fig(rps_ratio, two)} in req/s, "
            f"{fig(cpu_ratio, two)} in CPU per request ({goal})"
        )

    paired("match-info", "match-warn", "matching 202s, RUST_LOG=info against RUST_LOG=warn",
           "issue 9: within 10%, i.e. at least 0.90")
    for on, off in (("unwatched", "unwatched-nolog"), ("branch", "branch-nolog")):
        paired(on, off, f"{LABELS[on]}, delivery log on against off", "issue 11: within 15%, i.e. at least 0.85")
    print(
        "\nCPU columns: microseconds of the server's CPU per counted request, by thread: `workers` = tokio workers "
        "(HTTP in and out, evaluation, and the dispatcher, which runs on them), `queue` = hookgate-queue, `logs` = "
        "hookgate-logs. Delivered cases charge everything up to the drained queue. `CPU ratio` = the minimal "
        "server's CPU per request over the case's: the ratio if each had its core to itself, much less sensitive "
        "than `ratio` to other processes taking the server's core."
    )


main()
