"""Atlas: Seitzman ROIs equal nilearn's fetcher, templates, labels, published findings."""

import numpy as np
import pytest
from nilearn.datasets import fetch_coords_seitzman_2018, load_mni152_brain_mask

from msnet import atlas


def test_seitzman_rois_equal_nilearns_fetcher():
    ours = atlas.seitzman_rois()
    ref = fetch_coords_seitzman_2018()
    assert len(ours) == 300
    np.testing.assert_array_equal(ours[["x", "y", "z"]].to_numpy(), ref.rois.to_numpy())
    assert list(ours["seitzman_network"]) == list(ref.networks)
    assert list(ours["region"]) == list(ref.regions)
    assert set(ours.loc[ours["seitzman_network"] == "DefaultMode", "network"]) == {"DMN"}


def test_templates_peak_at_the_network_rois():
    mask = load_mni152_brain_mask(resolution=4)
    names, maps = atlas.network_templates(mask)
    assert names[:4] == ["DMN", "SMN", "VN", "SN"] and maps.shape[0] == 12
    coords = atlas.mask_coordinates(mask)
    pcc = np.argmin(np.linalg.norm(coords - atlas.CANONICAL_SEEDS["DMN"][1], axis=1))
    assert maps[0, pcc] > 0.5 > maps[2, pcc]  # PCC belongs to the DMN, not to the VN
    assert maps.max() <= 1.0


def _kdtree_templates(mask_img, sigma_mm):
    """The templates as msnet first built them: a k-d tree ball query per ROI."""
    from scipy.spatial import cKDTree

    coords = atlas.mask_coordinates(mask_img)
    tree = cKDTree(coords)
    rois = atlas.seitzman_rois()
    maps = np.zeros((len(atlas.network_names()), len(coords)), dtype=np.float32)
    for k, name in enumerate(atlas.network_names()):
        for center in rois.loc[rois["network"] == name, ["x", "y", "z"]].to_numpy():
            near = np.asarray(tree.query_ball_point(center, 4.0 * sigma_mm), dtype=int)
            if near.size:
                blob = atlas.gaussian_blob(coords[near], center, sigma_mm)
                maps[k, near] = np.maximum(maps[k, near], blob)
    return maps


@pytest.mark.parametrize("affine", [
    np.diag([4.0, 4.0, 4.0, 1.0]) + np.array([[0, 0, 0, -96.0], [0, 0, 0, -132.0], [0, 0, 0, -78.0], [0] * 4]),
    np.diag([-3.0, 3.0, 3.5, 1.0]) + np.array([[0, 0, 0, 96.0], [0, 0, 0, -126.0], [0, 0, 0, -72.0], [0] * 4]),
    np.array([[-4.0, 0.2, 0, 96.0], [0.1, 4.0, 0, -132.0], [0, 0, 4.5, -78.0], [0, 0, 0, 1.0]]),  # oblique
], ids=["4mm", "flipped-anisotropic", "oblique"])
@pytest.mark.parametrize("sigma", [6.0, 3.3])
def test_templates_equal_the_kdtree_construction(affine, sigma):
    import nibabel as nib

    rng = np.random.default_rng(1)
    mask = nib.Nifti1Image((rng.random((49, 58, 45)) < 0.6).astype(np.uint8), affine)
    np.testing.assert_array_equal(atlas.network_templates(mask, sigma)[1], _kdtree_templates(mask, sigma))


@pytest.mark.parametrize("finding", atlas.published_findings().itertuples(), ids=lambda f: f.finding)
def test_published_coordinates_carry_their_published_label(finding):
    label = atlas.harvard_oxford_label((finding.x, finding.y, finding.z)).lower()
    hemi, _, region = finding.label.partition(" ")
    assert label.startswith(hemi)
    key = {"supplementary": "juxtapositional", "posterior": "posterior division",
           "anterior": "cingulate", "superior": "superior", "insula": "insular"}
    word = region.split()[0]
    assert key.get(word, word) in label
