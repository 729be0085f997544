"""Network definitions: Seitzman-2018 ROIs, network templates, seeds, published findings, labels.

Everything here is built from files that ship inside installed packages, so nothing is
downloaded at run time:

* the Seitzman et al. (2018) 300-ROI coordinates with their network labels (nilearn);
* the Harvard-Oxford cortical max-probability atlas, 2 mm (NiMARE's ``resources/atlases``).
  NiMARE ships the image but not the label names, so the 48 standard FSL label names are
  listed here in FSL's order.

Voxel order convention used throughout msnet: a map "over the mask" is a 1-D array holding
the in-mask voxels of a 3-D boolean mask in C order (``data[mask]``), the same order
``nilearn.masking.apply_mask`` uses.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from msnet import ANALYSIS_NETWORKS

SEITZMAN_GROUPS = {
    "DMN": ("DefaultMode",),
    "SMN": ("SomatomotorDorsal", "SomatomotorLateral"),
    "VN": ("Visual",),
    "SN": ("Salience",),
}
"""Analysis network -> the Seitzman-2018 networks it is made of."""

NUISANCE_NETWORKS = (
    "FrontoParietal",
    "CinguloOpercular",
    "DorsalAttention",
    "VentralAttention",
    "Auditory",
    "Reward",
    "ParietoMedial",
    "MedialTemporalLobe",
)
"""Seitzman networks that enter dual-regression stage 1 as nuisance maps only
("unassigned" ROIs are left out)."""

TEMPLATE_SIGMA_MM = 6.0
"""Gaussian sigma of each ROI blob in the network templates (FWHM about 14 mm)."""

CANONICAL_SEEDS = {
    "DMN": ("posterior cingulate cortex", (0.0, -52.0, 26.0)),
    "SMN": ("left primary motor cortex", (-38.0, -22.0, 56.0)),
    "VN": ("primary visual cortex", (0.0, -88.0, 4.0)),
    "SN": ("right anterior insula", (36.0, 18.0, 2.0)),
}
"""Seed name and MNI coordinate (mm) per analysis network for seed-to-voxel maps
(PCC: Fox et al. 2005; M1: hand knob; V1: calcarine; aINS: Seeley et al. 2007)."""

PUBLISHED_FINDINGS = (
    # finding id, network, direction (+1 MS > HC), anatomical label, MNI (mm)
    ("DMN_L_ACC", "DMN", +1, "left anterior cingulate / paracingulate gyrus", (-4.0, 42.0, 12.0)),
    ("DMN_R_SFG", "DMN", +1, "right superior frontal gyrus", (22.0, 28.0, 52.0)),
    ("DMN_L_PCC", "DMN", -1, "left posterior cingulate", (-6.0, -46.0, 28.0)),
    ("SMN_L_PreCG_inc", "SMN", +1, "left precentral gyrus", (-36.0, -20.0, 58.0)),
    ("SMN_R_PreCG_inc", "SMN", +1, "right precentral gyrus", (38.0, -18.0, 56.0)),
    ("SMN_R_PostCG", "SMN", +1, "right postcentral gyrus", (58.0, -12.0, 32.0)),
    ("SMN_R_SMA", "SMN", -1, "right supplementary motor area", (6.0, -8.0, 58.0)),
    ("SMN_L_PreCG_dec", "SMN", -1, "left precentral gyrus", (-52.0, -2.0, 32.0)),
    ("SN_R_AG", "SN", +1, "right angular gyrus", (48.0, -52.0, 32.0)),
    ("SN_R_INS", "SN", -1, "right insula", (38.0, 14.0, -2.0)),
    ("VN_L_SPG", "VN", -1, "left superior parietal gyrus", (-26.0, -52.0, 54.0)),
)
"""The published MS-vs-HC findings (reference network meta-analysis) that the simulation
plants and the report compares against. The paper reports regions, not a shared coordinate
table, so each region gets a representative MNI coordinate; "bilateral precentral" is split
into its left and right peaks (11 locations for the 10 published findings). Each coordinate
lies well inside its region in the Harvard-Oxford cortical atlas shipped with NiMARE (the
region's label at the coordinate and at >= 90 % of the labelled voxels within 6 mm, same
hemisphere), so a recovered peak a voxel or two away still carries the published region's
label (tests/unit/test_atlas.py)."""

HARVARD_OXFORD_CORTICAL = (
    "Frontal Pole", "Insular Cortex", "Superior Frontal Gyrus", "Middle Frontal Gyrus",
    "Inferior Frontal Gyrus, pars triangularis", "Inferior Frontal Gyrus, pars opercularis",
    "Precentral Gyrus", "Temporal Pole", "Superior Temporal Gyrus, anterior division",
    "Superior Temporal Gyrus, posterior division", "Middle Temporal Gyrus, anterior division",
    "Middle Temporal Gyrus, posterior division", "Middle Temporal Gyrus, temporooccipital part",
    "Inferior Temporal Gyrus, anterior division", "Inferior Temporal Gyrus, posterior division",
    "Inferior Temporal Gyrus, temporooccipital part", "Postcentral Gyrus",
    "Superior Parietal Lobule", "Supramarginal Gyrus, anterior division",
    "Supramarginal Gyrus, posterior division", "Angular Gyrus",
    "Lateral Occipital Cortex, superior division", "Lateral Occipital Cortex, inferior division",
    "Intracalcarine Cortex", "Frontal Medial Cortex",
    "Juxtapositional Lobule Cortex (formerly Supplementary Motor Cortex)", "Subcallosal Cortex",
    "Paracingulate Gyrus", "Cingulate Gyrus, anterior division",
    "Cingulate Gyrus, posterior division", "Precuneous Cortex", "Cuneal Cortex",
    "Frontal Orbital Cortex", "Parahippocampal Gyrus, anterior division",
    "Parahippocampal Gyrus, posterior division", "Lingual Gyrus",
    "Temporal Fusiform Cortex, anterior division", "Temporal Fusiform Cortex, posterior division",
    "Temporal Occipital Fusiform Cortex", "Occipital Fusiform Gyrus", "Frontal Operculum Cortex",
    "Central Opercular Cortex", "Parietal Operculum Cortex", "Planum Polare",
    "Heschl's Gyrus (includes H1 and H2)", "Planum Temporale", "Supracalcarine Cortex",
    "Occipital Pole",
)
"""FSL Harvard-Oxford cortical label names; label value i (1-based) is entry i-1."""


def published_findings() -> pd.DataFrame:
    """Return the published MS-vs-HC findings as a table.

    Returns
    -------
    pandas.DataFrame
        Columns ``finding``, ``network``, ``direction`` (+1 increased / -1 decreased in MS),
        ``label``, ``x``, ``y``, ``z`` (MNI mm).
    """
    rows = [
        {"finding": f, "network": n, "direction": d, "label": lab, "x": c[0], "y": c[1], "z": c[2]}
        for f, n, d, lab, c in PUBLISHED_FINDINGS
    ]
    return pd.DataFrame(rows)


def _nilearn_data_dir() -> Path:
    from importlib.util import find_spec

    # find_spec locates nilearn without importing nilearn.datasets (0.2-0.5 s per job)
    return Path(find_spec("nilearn").origin).parent / "datasets" / "data"


@lru_cache(maxsize=1)
def seitzman_rois() -> pd.DataFrame:
    """Return the Seitzman-2018 300 ROIs with msnet network labels.

    Reads the coordinate and anatomical-label files that ship with nilearn exactly as
    ``nilearn.datasets.fetch_coords_seitzman_2018()`` does (same parsing, same ordering by
    network then y; a unit test checks the two agree), without importing
    ``nilearn.datasets``, which every subject job would otherwise pay for.

    Returns
    -------
    pandas.DataFrame
        One row per ROI, in nilearn's order: ``roi`` (``ROI001`` ...), ``x``, ``y``, ``z``
        (MNI mm), ``radius`` (mm), ``seitzman_network``, ``network`` (the analysis network
        name for DMN/SMN/VN/SN ROIs, otherwise the Seitzman name) and ``region``.
    """
    data = _nilearn_data_dir()
    rois = pd.read_csv(data / "seitzman_2018_ROIs_300inVol_MNI_allInfo.txt", delimiter=" ")
    rois = rois.rename(columns={"netName": "network", "radius(mm)": "radius"})
    labels_file = data / "seitzman_2018_ROIs_anatomicalLabels.txt"
    with labels_file.open() as handle:
        header = handle.readline()
    mapping = {int(i): name for i, name in (item.split("=") for item in header.strip().split(","))}
    codes = np.genfromtxt(labels_file, skip_header=1, encoding=None)
    rois["region"] = [mapping[int(c)] for c in codes]
    rois = rois.sort_values(by=["network", "y"]).reset_index(drop=True)
    lookup = {s: a for a, seitz in SEITZMAN_GROUPS.items() for s in seitz}
    table = pd.DataFrame(
        {
            "roi": [f"ROI{i + 1:03d}" for i in range(len(rois))],
            "x": rois["x"].to_numpy(float),
            "y": rois["y"].to_numpy(float),
            "z": rois["z"].to_numpy(float),
            "radius": rois["radius"].to_numpy(float),
            "seitzman_network": list(rois["network"]),
            "region": list(rois["region"]),
        }
    )
    table["network"] = [lookup.get(n, n) for n in table["seitzman_network"]]
    return table


def network_names() -> list[str]:
    """Return all template networks: the analysis networks first, then the nuisance ones."""
    return list(ANALYSIS_NETWORKS) + list(NUISANCE_NETWORKS)


def mask_coordinates(mask_img) -> np.ndarray:
    """Return the MNI (mm) coordinates of the in-mask voxels, shape (n_voxels, 3), C order."""
    mask = np.asarray(mask_img.dataobj).astype(bool)
    ijk = np.column_stack(np.nonzero(mask))
    return ijk @ mask_img.affine[:3, :3].T + mask_img.affine[:3, 3]


def gaussian_blob(coords: np.ndarray, center, sigma_mm: float) -> np.ndarray:
    """Return an isotropic Gaussian (peak 1) at ``center`` evaluated at ``coords`` (n, 3)."""
    d2 = np.sum((coords - np.asarray(center, float)) ** 2, axis=1)
    return np.exp(-d2 / (2.0 * sigma_mm**2))


def network_templates(mask_img, sigma_mm: float = TEMPLATE_SIGMA_MM):
    """Build one spatial template per network over the mask.

    Each template is the voxelwise maximum of Gaussian blobs (peak 1, ``sigma_mm``) centred
    on the network's Seitzman ROIs, so every node has the same weight however close nodes are.

    Parameters
    ----------
    mask_img : nibabel.Nifti1Image
        3-D brain mask defining the grid and the voxels.
    sigma_mm : float
        Gaussian sigma in mm.

    Returns
    -------
    names : list of str
        Network names, analysis networks first (see :func:`network_names`).
    maps : numpy.ndarray, shape (n_networks, n_voxels), float32
        Templates over the in-mask voxels.
    """
    mask = np.asarray(mask_img.dataobj).astype(bool)
    rois = seitzman_rois()
    names = network_names()
    # Beyond 4 sigma a blob is < 3.4e-4 of its peak: only voxels within that ball (distance
    # <= radius, as scipy's cKDTree.query_ball_point selects them) get a value. Each ball is
    # evaluated on its bounding box of the voxel grid instead of querying a k-d tree over all
    # voxels; distances and values are computed with the same floating-point operations as
    # :func:`mask_coordinates` and :func:`gaussian_blob`, so the templates are identical
    # (tested), at a fraction of the cost.
    radius = 4.0 * sigma_mm
    affine = np.asarray(mask_img.affine, dtype=np.float64)
    to_voxel = np.linalg.inv(affine)
    half = radius * np.sqrt((to_voxel[:3, :3] ** 2).sum(axis=1)) + 1.0
    diagonal = not np.count_nonzero(affine[:3, :3] - np.diag(np.diag(affine[:3, :3])))
    if diagonal:
        axes = [np.arange(n) * affine[a, a] + affine[a, 3] for a, n in enumerate(mask.shape)]
        volume = np.zeros(mask.shape, dtype=np.float32)
    else:
        coords = mask_coordinates(mask_img)
        number = np.full(mask.shape, -1, dtype=np.int64)  # voxel -> column (C order)
        number[mask] = np.arange(len(coords))
    maps = np.zeros((len(names), int(mask.sum())), dtype=np.float32)
    for k, name in enumerate(names):
        if diagonal:
            volume[...] = 0.0
        sel = rois[rois["network"] == name]
        for center in sel[["x", "y", "z"]].to_numpy():
            ijk = to_voxel[:3, :3] @ center + to_voxel[:3, 3]
            lo = np.maximum(np.floor(ijk - half).astype(int), 0)
            hi = np.minimum(np.ceil(ijk + half).astype(int) + 1, mask.shape)
            if np.any(hi <= lo):
                continue
            box = tuple(slice(a, b) for a, b in zip(lo, hi))
            if diagonal:
                dx, dy, dz = ((axes[a][box[a]] - center[a]) ** 2 for a in range(3))
                d2 = (dx[:, None, None] + dy[None, :, None]) + dz[None, None, :]
                blob = np.where(d2 <= radius**2, np.exp(-d2 / (2.0 * sigma_mm**2)), 0.0)
                volume[box] = np.maximum(volume[box], blob)
                continue
            cand = number[box].ravel()
            cand = cand[cand >= 0]
            d2 = np.sum((coords[cand] - center) ** 2, axis=1)
            near = d2 <= radius**2
            if near.any():
                cols = cand[near]
                blob = np.exp(-d2[near] / (2.0 * sigma_mm**2))  # gaussian_blob's formula
                maps[k, cols] = np.maximum(maps[k, cols], blob)
        if diagonal:
            maps[k] = volume[mask]
    return names, maps


def _harvard_oxford_path() -> Path:
    from importlib.util import find_spec

    # find_spec locates NiMARE without importing it (the import costs about 3 s)
    return (
        Path(find_spec("nimare").origin).parent
        / "resources"
        / "atlases"
        / "HarvardOxford-cort-maxprob-thr25-2mm.nii.gz"
    )


@lru_cache(maxsize=1)
def _harvard_oxford():
    import nibabel as nib

    img = nib.load(_harvard_oxford_path())
    return np.asarray(img.dataobj).astype(np.int16), img.affine


def harvard_oxford_label(xyz, search_mm: float = 6.0) -> str:
    """Return the Harvard-Oxford cortical label at an MNI coordinate, with hemisphere.

    Parameters
    ----------
    xyz : sequence of 3 floats
        MNI coordinate in mm.
    search_mm : float
        If the coordinate itself is unlabelled (white matter, edge of cortex), the nearest
        labelled voxel within this distance is used.

    Returns
    -------
    str
        E.g. ``"Right Angular Gyrus"``; ``"Unlabelled"`` when nothing lies within ``search_mm``.
    """
    labels, affine = _harvard_oxford()
    ijk = np.linalg.solve(affine, np.r_[np.asarray(xyz, float), 1.0])[:3]
    radius = int(np.ceil(search_mm / 2.0))
    center = np.round(ijk).astype(int)
    # the (2r+1)^3 neighbourhood in C order: the nearest labelled voxel, the first on ties
    v = center + np.argwhere(np.ones((2 * radius + 1,) * 3, bool)) - radius
    v = v[np.all((v >= 0) & (v < labels.shape), axis=1)]
    lab = labels[tuple(v.T)]
    d = np.linalg.norm((v - ijk) * 2.0, axis=1)
    ok = (lab > 0) & (d <= search_mm)
    best = int(lab[ok][np.argmin(d[ok])]) if ok.any() else 0
    if best == 0:
        return "Unlabelled"
    hemi = "Left " if xyz[0] < 0 else "Right " if xyz[0] > 0 else ""
    return f"{hemi}{HARVARD_OXFORD_CORTICAL[best - 1]}"
