"""Summarise Snakemake ``benchmark:`` files: the slowest jobs and per-rule totals.

Reads every ``*.tsv`` under a results folder's ``benchmarks/`` (Snakemake's columns ``s``,
``h:m:s``, ``max_rss``, ``max_vms``, ``max_uss``, ``max_pss``, ``io_in``, ``io_out``,
``mean_load``, ``cpu_time``; one row per repeat, averaged here). The rule is the first folder
under ``benchmarks/`` (``compute_subject_connectivity/study-S01_sub-01.tsv``) or the file name
of a rule with one job (``meta_networks.tsv``), as msnet's rules name them. Standard
library only, so it starts in a blink.

Usage: ``python benchmarks/summarise_benchmarks.py RESULTS_DIR/benchmarks [--top 10]
[--wall SECONDS --cores N] [--snakemake-log LOG] [--compare OTHER_RESULTS_DIR]``: with
``--wall``, also how busy the cores were; with ``--snakemake-log`` (the run's console log),
each rule's peak memory against the ``mem_mb`` and ``runtime`` its jobs declared; with
``--compare``, wall time, CPU time and disk use against another run's results folder (one
written by ``bench_fullscale.sh``/``bench_demo.sh``, with ``bench_wall.txt``).
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import re
import sys
from collections import defaultdict
from pathlib import Path

COLUMNS = ("s", "max_rss", "cpu_time")


def _number(text) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):  # Snakemake writes "NA"/"-" when it could not measure
        return math.nan


def read_benchmarks(folder: Path) -> list[dict]:
    """One record per benchmark file: ``rule``, ``job`` (path below the folder), mean columns."""
    records = []
    for path in sorted(folder.rglob("*.tsv")):
        rel = path.relative_to(folder)
        with path.open(newline="") as handle:
            rows = list(csv.DictReader(handle, delimiter="\t"))
        if not rows or "s" not in rows[0]:
            print(f"skipped {path}: not a Snakemake benchmark file", file=sys.stderr)
            continue
        rec = {"rule": rel.parts[0] if len(rel.parts) > 1 else rel.stem,
               "job": str(rel.with_suffix(""))}
        for col in COLUMNS:
            values = [v for v in (_number(row.get(col)) for row in rows) if not math.isnan(v)]
            rec[col] = sum(values) / len(values) if values else math.nan
        records.append(rec)
    return records


def _fmt(value: float, spec: str = ".1f") -> str:
    return "n/a" if math.isnan(value) else format(value, spec)


def summarise(records: list[dict], top: int = 10) -> str:
    """Text report: the ``top`` slowest jobs, then per-rule totals (slowest rule first)."""
    lines = [f"{len(records)} benchmarked jobs, {sum(r['s'] for r in records):.1f} s in total "
             "(sum over jobs of wall time)", "", f"{top} slowest jobs:",
             f"{'s':>9} {'cpu_s':>9} {'max_rss_MB':>11}  job"]
    for rec in sorted(records, key=lambda r: -r["s"])[:top]:
        lines.append(f"{rec['s']:9.2f} {_fmt(rec['cpu_time'], '9.2f')} {_fmt(rec['max_rss'], '11.0f')}  "
                     f"{rec['job']}")
    by_rule = defaultdict(list)
    for rec in records:
        by_rule[rec["rule"]].append(rec)
    lines += ["", "per rule:",
              f"{'jobs':>5} {'total_s':>9} {'mean_s':>8} {'max_s':>8} {'cpu_s':>9} {'max_rss_MB':>11}  rule"]
    for rule, recs in sorted(by_rule.items(), key=lambda kv: -sum(r["s"] for r in kv[1])):
        secs = [r["s"] for r in recs]
        cpu = sum(r["cpu_time"] for r in recs if not math.isnan(r["cpu_time"]))
        rss = max((r["max_rss"] for r in recs if not math.isnan(r["max_rss"])), default=math.nan)
        lines.append(f"{len(recs):5d} {sum(secs):9.1f} {sum(secs) / len(secs):8.2f} {max(secs):8.2f} "
                     f"{cpu:9.1f} {_fmt(rss, '11.0f')}  {rule}")
    return "\n".join(lines)


def declared_resources(log: Path) -> dict:
    """Benchmark file -> (mem_mb, runtime) the job declared, from Snakemake's console log."""
    declared, bench = {}, None
    for line in log.read_text(errors="replace").splitlines():
        line = line.strip()
        if line.startswith("benchmark:"):
            bench = line.split(":", 1)[1].strip()
        elif line.startswith("resources:") and bench:
            found = dict(re.findall(r"(\w+)=([\d.]+)", line))
            declared[Path(bench).resolve()] = (float(found.get("mem_mb", "nan")),
                                               float(found.get("runtime", "nan")))
            bench = None
    return declared


def memory_check(records: list[dict], folder: Path, declared: dict) -> str:
    """Per rule: the peak RSS against the smallest declared mem_mb, and the longest job
    against its declared runtime; flags every job above what it declared."""
    by_rule = defaultdict(list)
    for rec in records:
        mem, runtime = declared.get((folder / rec["job"]).with_suffix(".tsv").resolve(),
                                    (math.nan, math.nan))
        by_rule[rec["rule"]].append((rec, mem, runtime))
    lines = ["", "peak memory and time against the declared resources:",
             f"{'max_rss_MB':>11} {'mem_mb':>8} {'max_min':>8} {'runtime':>8}  rule"]
    over = []
    for rule, rows in sorted(by_rule.items()):
        rss = max((r["max_rss"] for r, _, _ in rows if not math.isnan(r["max_rss"])),
                  default=math.nan)
        mems = [m for _, m, _ in rows if not math.isnan(m)]
        runtimes = [t for _, _, t in rows if not math.isnan(t)]
        lines.append(f"{_fmt(rss, '.0f'):>11} {_fmt(min(mems) if mems else math.nan, '.0f'):>8} "
                     f"{max(r['s'] for r, _, _ in rows) / 60:8.1f} "
                     f"{_fmt(min(runtimes) if runtimes else math.nan, '.0f'):>8}  {rule}")
        over += [r["job"] for r, m, t in rows
                 if r["max_rss"] > m or r["s"] / 60 > t]
    lines.append(f"jobs above their declared mem_mb or runtime: {len(over)}"
                 + (f" ({', '.join(over[:5])}{', ...' if len(over) > 5 else ''})" if over else ""))
    return "\n".join(lines)


def disk_gb(folder: Path) -> float:
    """Bytes under a folder, in GB (without following symlinks)."""
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            path = Path(root) / name
            if not path.is_symlink():
                total += path.stat().st_size
    return total / 1e9


def comparison(results: Path, other: Path, records: list[dict]) -> str:
    """Wall time, CPU time, jobs and disk of this run against another results folder."""
    def totals(folder, recs):
        wall = float((folder / "bench_wall.txt").read_text())
        cpu = sum(r["cpu_time"] for r in recs if not math.isnan(r["cpu_time"]))
        return wall, cpu, len(recs), disk_gb(folder)

    this = totals(results, records)
    that = totals(other, read_benchmarks(other / "benchmarks"))
    lines = ["", f"this run ({results}) against {other}:",
             f"{'':14} {'this':>10} {'other':>10} {'ratio':>7}"]
    for name, a, b in zip(("wall s", "job CPU s", "jobs", "disk GB"), this, that):
        lines.append(f"{name:14} {a:10.1f} {b:10.1f} {a / b if b else math.nan:7.1f}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="a results folder's benchmarks/ directory")
    parser.add_argument("--top", type=int, default=10, help="how many of the slowest jobs to list")
    parser.add_argument("--wall", type=float, help="wall time of the whole run (s)")
    parser.add_argument("--cores", type=int, help="cores the run was given (with --wall)")
    parser.add_argument("--snakemake-log", type=Path,
                        help="the run's Snakemake console log (declared resources per job)")
    parser.add_argument("--compare", type=Path,
                        help="another run's results folder to compare wall, CPU and disk with")
    args = parser.parse_args()
    if not args.folder.is_dir():
        print(f"no benchmark folder {args.folder}", file=sys.stderr)
        return 1
    records = read_benchmarks(args.folder)
    if not records:
        print(f"no benchmark files under {args.folder}", file=sys.stderr)
        return 1
    print(summarise(records, args.top))
    if args.wall and args.cores:
        busy = sum(r["s"] for r in records) / (args.wall * args.cores)
        print(f"\njob time / (wall x {args.cores} cores) = {busy:.0%} (the rest is Snakemake's own "
              "overhead, idle cores, and rules without a benchmark: directive)")
    if args.snakemake_log:
        print(memory_check(records, args.folder, declared_resources(args.snakemake_log)))
    if args.compare:
        print(comparison(args.folder.parent, args.compare, records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
