#!/usr/bin/env bash
# Benchmark the workflow at the published scale: 25 studies, 1,524 MS / 886 HC (2,410
# subjects; `simulate.scale: 1`), with every other setting as in the demo's config.yaml
# (4 mm grid, 140 volumes, the demo's permutation counts). Prints the wall time, CPU time,
# peak memory per rule against the rule's declared mem_mb, the disk used, and the ratios
# against a demo run (`benchmarks/bench_demo.sh`) measured by the same script.
#
# Usage (from anywhere; Snakemake runs in the repository root):
#   benchmarks/bench_fullscale.sh [--cores N] [--scale S] [--results-dir DIR]
#                                 [--demo-results DIR] [--keep]
#
#   --cores N             cores for Snakemake (default 2)
#   --scale S             simulate.scale (default 1 = the published 2,410 subjects)
#   --results-dir DIR     results folder; must not exist or be empty (default: a temporary
#                         folder, deleted afterwards unless --keep)
#   --demo-results DIR    results folder of a finished demo run to compare with (its
#                         benchmarks/, bench_wall.txt and disk use); default: run the demo
#                         first (benchmarks/bench_demo.sh) and compare with that
#   --keep                keep the results folders
#   --dry-only            only time `snakemake -n` (the demo and this scale), run nothing
#
# At scale 1 on a 2-core machine this takes one to two hours and about 15 GB of disk.
# snakemake and python are taken from PATH (e.g. `export PATH=/work/venv/bin:$PATH`).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cores=2
scale=1
results=""
demo=""
keep=0
dry_only=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --cores) cores="$2"; shift 2 ;;
        --scale) scale="$2"; shift 2 ;;
        --results-dir) results="$2"; shift 2 ;;
        --demo-results) demo="$2"; shift 2 ;;
        --keep) keep=1; shift ;;
        --dry-only) dry_only=1; shift ;;
        -h|--help) sed -n '2,23p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "bench_fullscale.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

work="$(mktemp -d "${TMPDIR:-/tmp}/msnet-bench-fullscale.XXXXXX")"
[[ -n "$results" ]] || results="$work/fullscale"
if [[ -e "$results" && -n "$(ls -A "$results")" ]]; then
    echo "bench_fullscale.sh: $results is not empty; pick a new folder" >&2
    exit 2
fi

# One run: snakemake on a config file, wall time and disk use recorded in the results folder.
run() {  # run RESULTS_DIR CONFIG_FILE
    local out="$1" cfg="$2" start end status=0
    mkdir -p "$out"
    out="$(cd "$out" && pwd)"
    echo "snakemake --cores $cores --configfile $cfg --config results_dir=$out"
    start=$(date +%s.%N)
    (cd "$repo" && snakemake --cores "$cores" --configfile "$cfg" --config "results_dir=$out" \
        >"$out/bench_snakemake.log" 2>&1) || status=$?
    end=$(date +%s.%N)
    awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f\n", b - a }' >"$out/bench_wall.txt"
    if [[ $status -ne 0 ]]; then
        echo "snakemake FAILED (exit $status); last lines of $out/bench_snakemake.log:" >&2
        tail -n 40 "$out/bench_snakemake.log" >&2
        exit "$status"
    fi
}

# The plan alone: `snakemake -n` (parse, plan, DAG) for the demo and at this scale.
dry() {  # dry LABEL CONFIG_FILE
    local TIMEFORMAT="dry run ($1): %R s wall, %U s user CPU"
    time (cd "$repo" && snakemake -n -q --configfile "$2" --config "results_dir=$work/dry" \
        >/dev/null 2>&1)
}
printf 'results_dir: %s\n' "$work/unused" >"$work/demo.yaml"
printf 'simulate:\n  scale: %s\n' "$scale" >"$work/fullscale.yaml"
dry demo "$work/demo.yaml"
dry "scale $scale" "$work/fullscale.yaml"
jobs=$(cd "$repo" && snakemake -n --configfile "$work/fullscale.yaml" \
    --config "results_dir=$work/dry" 2>/dev/null | awk '$1 == "total" && !n {print $2; n = 1}')  # no early exit: SIGPIPE + pipefail
echo "jobs at scale $scale: $jobs"
if [[ $dry_only -eq 1 ]]; then
    rm -rf "$work"
    exit 0
fi

if [[ -z "$demo" ]]; then
    demo="$work/demo"
    echo "== the demo (config.yaml) =="
    run "$demo" "$work/demo.yaml"
fi
echo "== scale $scale =="
run "$results" "$work/fullscale.yaml"

python "$repo/benchmarks/summarise_benchmarks.py" "$results/benchmarks" --top 10 \
    --wall "$(cat "$results/bench_wall.txt")" --cores "$cores" \
    --snakemake-log "$results/bench_snakemake.log" --compare "$demo"

if [[ $keep -eq 0 ]]; then
    rm -rf "$work"
else
    echo "results kept in $results and $demo"
fi
