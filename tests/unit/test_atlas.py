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


@pytest.mark.parametrize("finding", atlas.published_findings().itertuples(), ids=lambda f: f.finding)
def test_published_coordinates_carry_their_published_label(finding):
    label = atlas.harvard_oxford_label((finding.x, finding.y, finding.z)).lower()
    hemi, _, region = finding.label.partition(" ")
    assert label.startswith(hemi)
    key = {"supplementary": "juxtapositional", "posterior": "posterior division",
           "anterior": "cingulate", "superior": "superior", "insula": "insular"}
    word = region.split()[0]
    assert key.get(word, word) in label
