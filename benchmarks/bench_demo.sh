#!/usr/bin/env bash
# Benchmark the whole demo: run the workflow from a clean results folder, print the total
# wall time, the 10 slowest jobs and per-rule totals (Snakemake `benchmark:` files, column s).
#
# Usage (from anywhere; Snakemake runs in the repository root):
#   benchmarks/bench_demo.sh [--cores N] [--results-dir DIR | --in-place] [--keep] [-- SNAKEMAKE_ARGS...]
#
#   --cores N          cores for Snakemake (default 2)
#   --results-dir DIR  results folder to use; must not exist or be empty (default: a new
#                      temporary folder, deleted afterwards unless --keep or the run fails)
#   --in-place         use the repository's results/ and DELETE it first
#   --keep             keep the temporary results folder
#   -- ARGS            passed to snakemake as they are, e.g. `-- --configfile tiny.yaml`
#                      (results_dir is always set with --config, which takes precedence)
#
# snakemake and python are taken from PATH (e.g. `export PATH=/work/venv/bin:$PATH`).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cores=2
results=""
in_place=0
keep=0
extra=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --cores) cores="$2"; shift 2 ;;
        --results-dir) results="$2"; shift 2 ;;
        --in-place) in_place=1; shift ;;
        --keep) keep=1; shift ;;
        --) shift; extra=("$@"); break ;;
        -h|--help) sed -n '2,16p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "bench_demo.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

temporary=0
if [[ $in_place -eq 1 ]]; then
    [[ -z "$results" ]] || { echo "bench_demo.sh: --in-place and --results-dir exclude each other" >&2; exit 2; }
    results="$repo/results"
    echo "--in-place: deleting $results"
    rm -rf "$results"
elif [[ -z "$results" ]]; then
    results="$(mktemp -d "${TMPDIR:-/tmp}/msnet-bench-demo.XXXXXX")"
    temporary=1
elif [[ -e "$results" && -n "$(ls -A "$results")" ]]; then
    echo "bench_demo.sh: $results is not empty; pick a new folder (or --in-place for results/)" >&2
    exit 2
fi
mkdir -p "$results"
results="$(cd "$results" && pwd)"
log="$results/bench_demo_snakemake.log"

# results_dir joins the caller's --config (a second --config would replace the first)
args=()
joined=0
for arg in "${extra[@]}"; do
    args+=("$arg")
    if [[ $joined -eq 0 && ( "$arg" == "--config" || "$arg" == "-C" ) ]]; then
        args+=("results_dir=$results")
        joined=1
    fi
done
[[ $joined -eq 1 ]] || args+=(--config "results_dir=$results")

cd "$repo"
echo "snakemake --cores $cores ${args[*]}  (log: $log)"
start=$(date +%s.%N)
status=0
snakemake --cores "$cores" "${args[@]}" >"$log" 2>&1 || status=$?
end=$(date +%s.%N)
wall=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }')

if [[ $status -ne 0 ]]; then
    echo "snakemake FAILED (exit $status) after $wall s; last lines of $log:"
    tail -n 40 "$log"
    keep=1
else
    steps=$(grep -o '[0-9]* of [0-9]* steps' "$log" | tail -n 1 || true)
    echo "total wall time: $wall s (${steps:-no jobs run}, $cores cores)"
fi
echo
python "$repo/benchmarks/summarise_benchmarks.py" "$results/benchmarks" --top 10 --wall "$wall" \
    --cores "$cores" || true

if [[ $temporary -eq 1 && $keep -eq 0 ]]; then
    rm -rf "$results"
else
    echo "results kept in $results"
fi
exit "$status"
