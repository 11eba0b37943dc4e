#!/usr/bin/env python3
"""Before/after table from scripts/bench-interleaved.sh's reports.

Every number compared is a ratio to a floor measured in the same run (the health RPC through the
same transport and auth layer), so that a noisy machine moves both sides alike; per side, the median
of its rounds' ratios is compared (a p99 is one stall away from doubling, so a mean would follow the
stalls). Prints a Markdown table for BENCHMARKS.md and exits 1 when a ratio got worse by more than
the allowed share (default 10%).

Usage: scripts/bench_compare.py OUT_DIR [--allowed 0.10] [--before-label X] [--after-label Y]
"""

import argparse
import glob
import os
import re
import statistics
import sys


def micros(cell):
    """'104 µs' / '13.9 ms' / '1837' -> microseconds."""
    cell = cell.strip().replace(",", "")
    m = re.match(r"^([0-9.]+)\s*(µs|ms|s)?$", cell)
    if not m:
        raise ValueError(f"not a duration: {cell!r}")
    value = float(m.group(1))
    return value * {"µs": 1, None: 1, "ms": 1000, "s": 1_000_000}[m.group(2)]


def number(cell):
    return float(cell.strip().replace(",", "").split()[0])


def table_rows(text):
    for line in text.splitlines():
        if line.startswith("|") and not line.startswith("|---") and not line.startswith("|--"):
            yield [c.strip() for c in line.strip().strip("|").split("|")]


def loadgen(text):
    # The results table (the generator-lag table reuses the row labels with fewer columns).
    rows = {
        r[0]: r
        for r in table_rows(text)
        if len(r) >= 14 and r[0] in {"1a", "1b", "2a", "2b", "3a", "3b", "4"}
    }
    p50, p99 = 8, 9
    cpu = lambda r: float(r[13].split()[0])
    ratios = {
        # name: (rows it needs, ratio, direction); a run with --only has the rows it ran.
        "Check p50 ÷ health p50 (1 in flight)": (("1a", "1b"), lambda: micros(rows["1b"][p50]) / micros(rows["1a"][p50]), "lower"),
        "Check p99 ÷ health p99 (1 in flight)": (("1a", "1b"), lambda: micros(rows["1b"][p99]) / micros(rows["1a"][p99]), "lower"),
        "Check server CPU/req ÷ health's (1 in flight)": (("1a", "1b"), lambda: cpu(rows["1b"]) / cpu(rows["1a"]), "lower"),
        "saturated Check req/s ÷ health req/s": (("2a", "2b"), lambda: number(rows["2b"][6]) / number(rows["2a"][6]), "higher"),
        "open-loop Check p99 ÷ health p99": (("3a", "3b"), lambda: micros(rows["3b"][p99]) / micros(rows["3a"][p99]), "lower"),
        "BatchCheck decisions/s ÷ saturated health req/s": (("2a", "4"), lambda: number(rows["4"][7]) / number(rows["2a"][6]), "higher"),
    }
    return {name: (ratio(), better) for name, (needs, ratio, better) in ratios.items()
            if all(r in rows for r in needs)}


def phase_table(text, p50_col, p99_col):
    out = {}
    for r in table_rows(text):
        if len(r) > p99_col and re.match(r"^[0-9.,]+$", r[p50_col]) and re.match(r"^[0-9.,]+$", r[p99_col]):
            out[r[0]] = (number(r[p50_col]), number(r[p99_col]))
    return out


def profilegen(text):
    t = phase_table(text, 2, 3)
    health, health_open = t["Health/Check, 1 in flight"], t["Health/Check, open loop 500 req/s"]
    out = {}
    for phase, floor in [
        ("GetProfile (cache on), 1 in flight", health),
        ("GetProfile (cache off), 1 in flight", health),
        ("GetProfile (cache on), open loop 500 req/s", health_open),
        ("GetProfile (cache off), open loop 500 req/s", health_open),
    ]:
        out[f"{phase}: p50 ÷ health p50"] = (t[phase][0] / floor[0], "lower")
        out[f"{phase}: p99 ÷ health p99"] = (t[phase][1] / floor[1], "lower")
    return out


def recgen(text):
    t = phase_table(text, 3, 4)
    floor = t["Health/Check (floor)"]
    out = {}
    for phase, (p50, p99) in t.items():
        if phase.startswith("Recommend"):
            out[f"{phase}: p50 ÷ floor p50"] = (p50 / floor[0], "lower")
            out[f"{phase}: p99 ÷ floor p99"] = (p99 / floor[1], "lower")
    return out


PARSERS = {"loadgen": loadgen, "profilegen": profilegen, "recgen": recgen}


def main():
    args = argparse.ArgumentParser()
    args.add_argument("out_dir")
    args.add_argument("--allowed", type=float, default=0.10)
    args.add_argument("--before-label", default="before")
    args.add_argument("--after-label", default="after")
    a = args.parse_args()
    worse = []
    lines = [
        f"| bench | ratio (to the same run's floor) | {a.before_label} | {a.after_label} | change | |",
        "|---|---|--:|--:|--:|---|",
    ]
    for bench, parse in PARSERS.items():
        sides = {}
        for side in ("before", "after"):
            runs = sorted(glob.glob(os.path.join(a.out_dir, f"{bench}-{side}-*.md")))
            sides[side] = [parse(open(f, encoding="utf-8").read()) for f in runs]
        if not sides["before"] or not sides["after"]:
            continue
        for metric in sides["before"][0]:
            better = sides["before"][0][metric][1]
            b = statistics.median(run[metric][0] for run in sides["before"])
            f = statistics.median(run[metric][0] for run in sides["after"])
            change = (f - b) / b
            got_worse = change > a.allowed if better == "lower" else change < -a.allowed
            verdict = "**worse by more than {:.0%}**".format(a.allowed) if got_worse else "ok"
            if got_worse:
                worse.append(f"{bench}: {metric}")
            rounds = f"{len(sides['before'])}+{len(sides['after'])}"
            lines.append(
                f"| {bench} ({rounds} runs) | {metric} ({better} is better) | {b:.2f} | {f:.2f} | {change:+.1%} | {verdict} |"
            )
    print("\n".join(lines))
    if worse:
        print("\nWorse by more than the allowed share: " + "; ".join(worse), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
