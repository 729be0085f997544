"""Literature mode (issue 9) acceptance: the SDM-style estimator and the hybrid recover the
planted findings of the reduced simulation from a simulated literature.

The literature: the reduced simulation's 25 studies, planted locations, per-study effects and
seed (``reduced_config``, 6 mm grid), at the published sample sizes (1,524 MS / 886 HC), each
study's MS-vs-HC t map drawn directly and published as its p < 0.001, >= 80 mm³ cluster
peaks (:func:`msnet.literature.simulate_literature`; effect d = 0.8 at a planted location).
At the demo's 5 % sample sizes (2-17 per group) almost nothing survives p < 0.001 (38 peaks
over the demo's 100 study x network t maps), so peaks-only recovery is tested here.
"""

import numpy as np
import pandas as pd
import pytest

from msnet import ANALYSIS_NETWORKS
from msnet import literature as lit
from msnet.atlas import published_findings
from msnet.report import compare_with_published

from conftest import reduced_config

pytestmark = pytest.mark.slow


def _img(values, mask_img):
    import nibabel as nib

    mask = np.asarray(mask_img.dataobj) > 0
    vol = np.zeros(mask.shape, np.float32)
    vol[mask] = values
    return nib.Nifti1Image(vol, mask_img.affine)


@pytest.fixture(scope="module")
def literature(tmp_path_factory):
    import nibabel as nib

    from msnet.simulate import load_grid

    tmp = tmp_path_factory.mktemp("literature")
    config = reduced_config(tmp)
    peaks, studies, maps = lit.simulate_literature(config["simulate"], config["seed"],
                                                   return_maps=True)
    peaks.to_csv(tmp / "peaks.tsv", sep="\t", index=False)
    studies.to_csv(tmp / "studies.tsv", sep="\t", index=False)
    table = lit.read_literature_studies(tmp / "studies.tsv")
    read = lit.read_peaks(tmp / "peaks.tsv", table)
    grid = load_grid(config["simulate"]["resolution_mm"])
    names = list(grid.names)
    results = {}
    for network in ANALYSIS_NETWORKS:
        # the network's analysis mask as the image pipeline builds it (template with nodes)
        vol = np.zeros(grid.mask.shape, np.uint8)
        vol[grid.mask] = grid.base_maps[names.index(network)] > 0.2
        mask_img = nib.Nifti1Image(vol, grid.mask_img.affine)
        inside = vol > 0
        images = {}
        for i, study in enumerate(sorted(maps)):
            if i % 2 == 0:  # hybrid: every other study shares its g and var(g) maps
                _, g, v = maps[study][network]
                paths = (tmp / f"{study}_{network}_g.nii.gz", tmp / f"{study}_{network}_v.nii.gz")
                nib.save(_img(g[inside], mask_img), paths[0])
                nib.save(_img(v[inside], mask_img), paths[1])
                images[study] = paths
        for label, image_maps in (("sdm", None), ("hybrid", images)):
            maps_ = lit.sdm_study_maps(read, table, network, mask_img, image_maps=image_maps)
            res = lit.sdm_meta(maps_, mask_img, {"n_permutations": 200, "seed": 1}, network)
            results.setdefault(label, []).append(compare_with_published(
                _img(res["z"], mask_img), _img(-np.log10(res["p_fwe"]), mask_img), network))
    return {k: pd.concat(v, ignore_index=True) for k, v in results.items()}


@pytest.mark.parametrize("label, minimum", [("sdm", 9), ("hybrid", 10)])
def test_planted_locations_recovered(literature, label, minimum):
    table = literature[label]
    assert len(table) == len(published_findings())
    found = table[table["found"]]
    print(f"{label}: {len(found)}/11 found, distances {found['distance_mm'].round(1).tolist()}")
    assert len(found) >= minimum, table[["finding", "found", "note"]].to_string()
    assert (found["distance_mm"] <= 12).all()
    assert (np.sign(found["statistic"])
            == np.where(found["direction"] == "MS>HC", 1, -1)).all()
