"""Benchmark: write the synthetic demo dataset (all 25 studies) and report time and memory.

Usage::

    python benchmarks/bench_simulate.py [--scale 0.05] [--resolution 4] [--out DIR] [--seed 0]

Without ``--out`` the dataset goes to a temporary directory that is removed afterwards.
Prints the number of subjects, wall and CPU time (total and per subject), the size on disk
and the peak resident memory. Set ``OPENBLAS_NUM_THREADS=1`` to measure on one core.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import tempfile
import time
from pathlib import Path

from msnet import simulate


def _dir_size_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6


def run(scale: float, resolution: int, out: Path, seed: int) -> dict:
    """Write the dataset into ``out`` and return the measurements."""
    sim = {"scale": scale, "resolution_mm": resolution}
    wall, cpu = time.perf_counter(), time.process_time()
    simulate.load_grid(resolution)
    setup = time.perf_counter() - wall
    for study in simulate.STUDY_IDS:
        simulate.simulate_study(sim, seed, study, out)
    simulate.write_dataset_index(sim, seed, out)
    n_subjects = len(simulate.plan_dataset(sim, seed))
    return {
        "subjects": n_subjects,
        "setup_s": setup,
        "wall_s": time.perf_counter() - wall,
        "cpu_s": time.process_time() - cpu,
        "size_mb": _dir_size_mb(out),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main(argv=None) -> None:
    """Parse arguments, run the benchmark, print a one-screen report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=simulate.SIM_DEFAULTS["scale"])
    parser.add_argument("--resolution", type=int, default=simulate.SIM_DEFAULTS["resolution_mm"])
    parser.add_argument("--out", type=Path, help="output directory (default: temporary)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="msnet-bench-sim-"))
    try:
        res = run(args.scale, args.resolution, out, args.seed)
    finally:
        if args.out is None:
            shutil.rmtree(out, ignore_errors=True)
    n = res["subjects"]
    print(f"simulate: scale={args.scale} resolution={args.resolution} mm -> {out}")
    print(f"  subjects          {n}")
    print(f"  set-up (grid)     {res['setup_s']:.1f} s")
    print(f"  wall time         {res['wall_s']:.1f} s ({res['wall_s'] / n:.3f} s/subject)")
    print(f"  CPU time          {res['cpu_s']:.1f} s ({res['cpu_s'] / n:.3f} s/subject)")
    print(f"  size on disk      {res['size_mb']:.0f} MB ({res['size_mb'] / n:.1f} MB/subject)")
    print(f"  peak RSS          {res['peak_rss_mb']:.0f} MB")


if __name__ == "__main__":
    main()
