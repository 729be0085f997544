"""Benchmark: msnet's SDM-style meta-analysis vs NiMARE's ALE on the same published peaks.

Input: the simulated literature of the demo's 25 studies at the published sample sizes
(:func:`msnet.literature.simulate_literature`, seed 20261121, ``--resolution`` mm grid), read
through the table readers, and each network's template mask on that grid. In one run it times
(CPU seconds, :func:`time.process_time`, after the imports):

* SDM-style: for each of the 4 networks, :func:`msnet.literature.sdm_study_maps` (recreated
  bounds and maps of the 25 studies) and :func:`msnet.literature.sdm_meta` (random effects,
  ``--permutations`` sign flips, default 1,000);
* ALE: for each network and direction, :func:`msnet.literature.cbma_nimare` (NiMARE's ALE
  with ``--iters`` Monte-Carlo iterations of its voxel-level FWE, default 10,000),

and prints both times and their ratio.

Usage: ``python benchmarks/bench_cbma.py [--resolution 4] [--permutations 1000] [--iters 10000]``
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

from msnet import ANALYSIS_NETWORKS
from msnet import literature as lit


def literature(resolution: int):
    """The simulated literature's peaks and studies (as read from its tables) and the masks."""
    from msnet.simulate import load_grid

    peaks, studies = lit.simulate_literature({"resolution_mm": resolution}, 20261121)
    with tempfile.TemporaryDirectory() as tmp:
        peaks.to_csv(Path(tmp) / "peaks.tsv", sep="\t", index=False)
        studies.to_csv(Path(tmp) / "studies.tsv", sep="\t", index=False)
        table = lit.read_literature_studies(Path(tmp) / "studies.tsv")
        read = lit.read_peaks(Path(tmp) / "peaks.tsv", table)
    brain = load_grid(resolution).mask_img
    return read, table, {n: lit.template_mask(n, brain) for n in ANALYSIS_NETWORKS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--resolution", type=int, default=4)
    parser.add_argument("--permutations", type=int, default=1000)
    parser.add_argument("--iters", type=int, default=10000)
    args = parser.parse_args()
    import nimare.correct  # noqa: F401 (imports outside the timings)
    import nimare.meta.cbma  # noqa: F401

    peaks, studies, masks = literature(args.resolution)
    voxels = sum(int(m.get_fdata().sum()) for m in masks.values())
    print(f"{len(studies)} studies, {len(peaks)} peaks, 4 networks, {voxels} mask voxels "
          f"({args.resolution} mm)")
    start = time.process_time()
    for net, mask in masks.items():
        maps = lit.sdm_study_maps(peaks, studies, net, mask)
        lit.sdm_meta(maps, mask, {"n_permutations": args.permutations, "seed": 1}, net)
    sdm = time.process_time() - start
    start = time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for net, mask in masks.items():
            for direction in lit.DIRECTIONS:
                lit.cbma_nimare(peaks, studies, net, direction, mask, "ALE", args.iters, 1)
    ale = time.process_time() - start
    print(f"SDM-style, {args.permutations} sign flips, 4 networks: {sdm:.1f} s CPU")
    print(f"NiMARE ALE, {args.iters} Monte-Carlo iterations, 4 networks x 2 directions: "
          f"{ale:.1f} s CPU")
    print(f"ratio ALE / SDM-style: {ale / sdm:.2f}")


if __name__ == "__main__":
    main()
