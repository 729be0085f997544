"""Per-subject QC page, like XCP-D's executive summary: one self-contained HTML file per subject.

The subject stage writes ``sub-{label}_qc.html`` next to the subject's QC JSON, from data
already in memory (no file is read back):

* the QC decision (included, or excluded with its reason) and the QC measures;
* framewise displacement and standardised DVARS over the run, with the censoring thresholds
  (dashed) and every censored volume marked (one ``<rect class="censored">`` per volume; the
  dummy volumes as ``class="dummy"``);
* a carpet plot before denoising (raw BOLD) and after (cleaned; censored volumes blank),
  :data:`CARPET_VOXELS` voxels spread evenly over the analysis mask, each row z-scored over
  time, rows grouped by the network whose template covers them (the four analysis
  networks, the other Seitzman networks, then voxels outside every network's extent:
  mostly white matter and ventricles);
* the four dual-regression stage-2 maps (DMN, SMN, VN, SN), sagittal, coronal and axial
  slices through each network's canonical seed (:data:`msnet.atlas.CANONICAL_SEEDS`), so
  every subject is shown at the same place.

The page is hand-written HTML with inline SVG (traces and text) and small PNGs (carpets and
maps, encoded here by :func:`png_bytes`). matplotlib is not used on purpose: importing it
costs about 0.5 s of CPU per job and drawing such a figure another 0.3-1 s per subject, more
than the subject stage's budget for this page; the numpy route costs a few tens of
milliseconds per subject (measured: see ``benchmarks/`` and the subject job logs).
The page is written before the QC JSON, which stays the subject's last file.
"""

from __future__ import annotations

import base64
import html
import math
import struct
import zlib
from dataclasses import dataclass

import numpy as np

from msnet import ANALYSIS_NETWORKS

CARPET_VOXELS = 256
"""Voxels (rows) of each carpet plot, spread evenly over the analysis mask."""

MAX_CARPET_COLUMNS = 600
"""Longer runs show every k-th volume in the carpets (the traces keep every volume)."""

NETWORK_LEVEL = 0.2
"""Template level defining a network's extent when grouping the carpet's rows (the
``qc.lesion_template_threshold`` default)."""

GROUPS = (*ANALYSIS_NETWORKS, "other", "none")
GROUP_LABELS = {"other": "other networks", "none": "no network"}
GROUP_COLORS = {"DMN": "#d62728", "SMN": "#1f77b4", "VN": "#9467bd", "SN": "#ff7f0e",
                "other": "#8c8c8c", "none": "#2b2b2b"}

Z_CLIP = 2.5
"""Carpet grey scale: z from -Z_CLIP (black) to +Z_CLIP (white)."""

_GREYS = 14
_CENSORED, _DUMMY = _GREYS, _GREYS + 1
_CARPET_PALETTE = np.array(
    [[round(255 * i / (_GREYS - 1))] * 3 for i in range(_GREYS)]
    + [[244, 166, 166], [198, 211, 232]], dtype=np.uint8)
"""Palette of the carpet PNGs: greys, then censored (light red) and dummy (light blue)."""

_DIVERGING = np.array([[5, 48, 97], [67, 147, 195], [230, 230, 230], [214, 96, 77],
                       [103, 0, 31]], dtype=float)
"""Colours of the stage-2 maps at -1, -0.5, 0, 0.5, 1 x the network's scale (RdBu-like)."""

_WIDTH, _LEFT, _PLOT = 900, 120, 750
"""Figure width, left margin (labels) and plot width (px) of the time-series figure."""


@dataclass
class QcTraces:
    """What the QC page draws over time, gathered by :func:`msnet.denoise.clean_subject`.

    Volume indices count the volumes of all runs in order (as ``sample_mask`` does).

    Attributes
    ----------
    voxels : numpy.ndarray
        The carpet's voxels: positions among the analysis voxels (C order).
    raw : numpy.ndarray
        (n_volumes, n_carpet) float32 raw BOLD at those voxels, every volume.
    cleaned : numpy.ndarray or None
        (len(cleaned_volumes), n_carpet) cleaned BOLD at those voxels.
    cleaned_volumes : numpy.ndarray
        The volume index of each row of ``cleaned``.
    kept : numpy.ndarray
        Volumes kept by censoring (every run, usable or not).
    dummy : numpy.ndarray
        Non-steady-state volumes (removed before censoring).
    fd, dvars, std_dvars : numpy.ndarray
        (n_volumes,) per volume; NaN where undefined (each run's first volume).
    run_starts : list of int
        First volume of each run.
    fd_threshold, std_dvars_threshold : float or None
        The censoring thresholds (None when the strategy does not scrub).
    labels : list of str or None
        Carpet voxel -> one of :data:`GROUPS` (set by :mod:`msnet.connectivity`).
    """

    voxels: np.ndarray
    raw: np.ndarray
    cleaned: np.ndarray | None
    cleaned_volumes: np.ndarray
    kept: np.ndarray
    dummy: np.ndarray
    fd: np.ndarray
    dvars: np.ndarray
    std_dvars: np.ndarray
    run_starts: list
    fd_threshold: float | None = None
    std_dvars_threshold: float | None = None
    labels: list | None = None

    @property
    def n_volumes(self) -> int:
        return int(self.raw.shape[0])

    def censored(self) -> np.ndarray:
        """Volumes removed by censoring (post-dummy volumes not kept)."""
        mask = np.ones(self.n_volumes, bool)
        mask[self.kept] = False
        mask[self.dummy] = False
        return np.flatnonzero(mask)


def carpet_voxels(n_voxels: int, n: int = CARPET_VOXELS) -> np.ndarray:
    """``n`` positions spread evenly over ``n_voxels`` (all of them when fewer)."""
    if n_voxels <= n:
        return np.arange(n_voxels)
    return np.unique(np.linspace(0, n_voxels - 1, n).round().astype(np.int64))


def network_labels(templates: np.ndarray, names, positions, level: float = NETWORK_LEVEL) -> list:
    """Group of each carpet voxel: the network whose template is largest there, ``other``
    for a network outside :data:`msnet.ANALYSIS_NETWORKS`, ``none`` below ``level``."""
    values = np.asarray(templates)[:, positions]
    best = values.argmax(axis=0)
    out = []
    for k, v in zip(best, values.max(axis=0)):
        name = names[k]
        out.append("none" if v < level else name if name in ANALYSIS_NETWORKS else "other")
    return out


# --------------------------------------------------------------------------- PNG


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def png_bytes(pixels: np.ndarray, palette: np.ndarray | None = None) -> bytes:
    """Encode an image as PNG (the format is simple enough not to import an imaging library).

    Parameters
    ----------
    pixels : numpy.ndarray
        (height, width, 3) uint8 RGB, or (height, width) palette indices with ``palette``.
    palette : numpy.ndarray, optional
        (n <= 256, 3) uint8 colours; 16 or fewer colours are stored at 4 bits per pixel.
    """
    pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
    height, width = pixels.shape[:2]
    if palette is None:
        depth, colour, rows = 8, 2, pixels.reshape(height, width * 3)
    elif len(palette) <= 16:
        depth, colour = 4, 3
        padded = np.zeros((height, width + width % 2), np.uint8)
        padded[:, :width] = pixels
        rows = (padded[:, 0::2] << 4) | padded[:, 1::2]
    else:
        depth, colour, rows = 8, 3, pixels
    raw = np.concatenate([np.zeros((height, 1), np.uint8), rows], axis=1).tobytes()
    out = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth,
                                                             colour, 0, 0, 0))
    if palette is not None:
        out += _chunk(b"PLTE", np.asarray(palette, np.uint8).tobytes())
    return out + _chunk(b"IDAT", zlib.compress(raw, 9)) + _chunk(b"IEND", b"")


def _image(png: bytes, x, y, width, height, pixelated=False, extra="") -> str:
    style = ' style="image-rendering:pixelated"' if pixelated else ""
    data = base64.b64encode(png).decode("ascii")
    return (f'<image x="{x:.1f}" y="{y:.1f}" width="{width:.1f}" height="{height:.1f}" '
            f'preserveAspectRatio="none"{style}{extra} href="data:image/png;base64,{data}"/>')


# --------------------------------------------------------------------------- carpets


def _zscore_rows(values: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Columns of ``values`` (time x voxels) z-scored with the mean/SD over ``reference`` rows."""
    values = np.asarray(values, np.float64)
    ref = values[reference] if len(reference) else values
    mean = ref.mean(axis=0) if len(ref) else np.zeros(values.shape[1])
    sd = ref.std(axis=0) if len(ref) else np.ones(values.shape[1])
    sd = np.where(sd > 1e-6 * np.maximum(np.abs(mean), 1e-12), sd, np.inf)
    return (values - mean) / sd


def _grey_levels(z: np.ndarray) -> np.ndarray:
    level = np.rint((np.clip(z, -Z_CLIP, Z_CLIP) + Z_CLIP) / (2 * Z_CLIP) * (_GREYS - 1))
    return np.nan_to_num(level, nan=(_GREYS - 1) // 2).astype(np.uint8)


def carpet_pixels(traces: QcTraces, order: np.ndarray, columns: np.ndarray) -> tuple:
    """Palette indices of the two carpets: rows = carpet voxels in ``order``, columns = the
    volumes ``columns``. Before: raw BOLD, z-scored over the post-dummy volumes. After:
    cleaned BOLD z-scored over the cleaned volumes; censored and dummy volumes coloured."""
    n = traces.n_volumes
    post = np.setdiff1d(np.arange(n), traces.dummy)
    before = _grey_levels(_zscore_rows(traces.raw[:, order], post))[columns].T
    after = np.full((len(order), len(columns)), _CENSORED, np.uint8)
    status = np.full(n, _CENSORED, np.uint8)
    status[traces.dummy] = _DUMMY
    after[:] = status[columns]
    if traces.cleaned is not None and len(traces.cleaned_volumes):
        rows = np.full(n, -1)
        rows[traces.cleaned_volumes] = np.arange(len(traces.cleaned_volumes))
        z = _grey_levels(_zscore_rows(traces.cleaned[:, order], np.arange(len(traces.cleaned))))
        shown = rows[columns] >= 0
        after[:, shown] = z[rows[columns][shown]].T
    return before, after


# --------------------------------------------------------------------------- SVG pieces


def _x(volume, n: int) -> float:
    return _LEFT + (volume + 0.5) * _PLOT / n


def _path(values: np.ndarray, n: int, y0: float, height: float, top: float) -> str:
    parts, pen = [], "M"
    for v, value in enumerate(values):
        if not np.isfinite(value):
            pen = "M"
            continue
        y = y0 + height - min(max(value, 0.0), top) / top * height
        parts.append(f"{pen}{_x(v, n):.1f} {y:.1f}")
        pen = "L"
    return " ".join(parts)


def _num(value, decimals=2) -> str:
    from msnet.formatting import format_number

    return format_number(value, decimals)


def _trace_panel(values, n, y0, height, name, unit, threshold, colour) -> str:
    finite = values[np.isfinite(values)]
    top = max([float(finite.max()) if finite.size else 0.0,
               1.25 * threshold if threshold else 0.0, 1e-3])
    out = [f'<g class="trace" data-measure="{name}">',
           f'<line x1="{_LEFT}" y1="{y0 + height}" x2="{_LEFT + _PLOT}" y2="{y0 + height}" '
           'stroke="#999"/>',
           f'<line x1="{_LEFT}" y1="{y0}" x2="{_LEFT}" y2="{y0 + height}" stroke="#999"/>',
           f'<text x="{_LEFT - 6}" y="{y0 + 9}" text-anchor="end">{_num(top)}</text>',
           f'<text x="{_LEFT - 6}" y="{y0 + height}" text-anchor="end">0</text>',
           f'<text x="{_LEFT - 40}" y="{y0 + height / 2 + 4}" text-anchor="end" '
           f'font-weight="bold">{html.escape(unit)}</text>']
    if threshold:
        y = y0 + height - threshold / top * height
        out.append(f'<line class="threshold" x1="{_LEFT}" y1="{y:.1f}" x2="{_LEFT + _PLOT}" '
                   f'y2="{y:.1f}" stroke="#444" stroke-dasharray="4 3"/>')
        out.append(f'<text x="{_LEFT + _PLOT + 4}" y="{y + 4:.1f}">{_num(threshold)}</text>')
    out.append(f'<path d="{_path(values, n, y0, height, top)}" fill="none" stroke="{colour}" '
               'stroke-width="1.2"/>')
    return "".join(out) + "</g>"


def _volume_ticks(n: int, y: float, tr) -> str:
    step = max(1, _nice_step(n / 8))
    out = [f'<line x1="{_LEFT}" y1="{y}" x2="{_LEFT + _PLOT}" y2="{y}" stroke="#999"/>']
    for v in range(0, n, step):
        x = _LEFT + v * _PLOT / n
        out.append(f'<line x1="{x:.1f}" y1="{y}" x2="{x:.1f}" y2="{y + 4}" stroke="#999"/>'
                   f'<text x="{x:.1f}" y="{y + 16}" text-anchor="middle">{v}</text>')
    label = "volume" + (f" (TR {_num(tr)} s)" if tr else "")
    out.append(f'<text x="{_LEFT + _PLOT / 2}" y="{y + 32}" text-anchor="middle">{label}</text>')
    return "".join(out)


def _nice_step(raw: float) -> int:
    base = 10 ** math.floor(math.log10(max(raw, 1)))
    return int(next(m * base for m in (1, 2, 5, 10) if m * base >= raw))


def _group_bar(labels: list, y0: float, height: float) -> str:
    out, n, start = [], len(labels), 0
    for k in range(1, n + 1):
        if k < n and labels[k] == labels[start]:
            continue
        top, h = y0 + start * height / n, (k - start) * height / n
        group = labels[start]
        out.append(f'<rect class="group" data-group="{group}" x="{_LEFT - 12}" y="{top:.1f}" '
                   f'width="8" height="{h:.1f}" fill="{GROUP_COLORS[group]}"/>')
        if h >= 11:
            out.append(f'<text x="{_LEFT - 16}" y="{top + h / 2 + 4:.1f}" text-anchor="end" '
                       f'font-size="11">{html.escape(GROUP_LABELS.get(group, group))}</text>')
        start = k
    return "".join(out)


def timeseries_svg(traces: QcTraces, tr=None) -> str:
    """FD and std DVARS traces over the censoring marks, and the two carpet plots."""
    n = traces.n_volumes
    censored, dummy = traces.censored(), traces.dummy
    fd_y, dv_y, h = 24, 118, 70
    before_y, after_y, ch = 228, 448, 200
    axis_y = after_y + ch + 6
    band = _PLOT / n
    out = [f'<svg id="timeseries" xmlns="http://www.w3.org/2000/svg" width="{_WIDTH}" '
           f'height="{axis_y + 40}" viewBox="0 0 {_WIDTH} {axis_y + 40}" font-size="12" '
           'font-family="sans-serif">']
    out.append(f'<g class="marks" data-n-censored="{len(censored)}" '
               f'data-n-dummy="{len(dummy)}">')
    for kind, volumes, colour in (("dummy", dummy, "#c6d3e8"), ("censored", censored, "#f4a6a6")):
        out += [f'<rect class="{kind}" data-volume="{v}" x="{_LEFT + v * band:.2f}" y="{fd_y}" '
                f'width="{max(band, 0.6):.2f}" height="{dv_y + h - fd_y}" fill="{colour}"/>'
                for v in volumes]
    out.append("</g>")
    for start in traces.run_starts[1:]:
        x = _LEFT + start * band
        out.append(f'<line class="run" x1="{x:.1f}" y1="{fd_y}" x2="{x:.1f}" y2="{after_y + ch}" '
                   'stroke="#000" stroke-dasharray="2 2"/>')
    out.append(f'<text x="{_LEFT}" y="{fd_y - 8}">Framewise displacement: '
               f'{len(censored)} censored volume{"s" if len(censored) != 1 else ""} (red), '
               f'{len(dummy)} dummy (blue); dashed: censoring threshold</text>')
    out.append(_trace_panel(traces.fd, n, fd_y, h, "fd", "FD (mm)", traces.fd_threshold,
                            "#b2182b"))
    out.append(_trace_panel(traces.std_dvars, n, dv_y, h, "std_dvars", "std DVARS",
                            traces.std_dvars_threshold, "#2166ac"))
    step = max(1, math.ceil(n / MAX_CARPET_COLUMNS))
    columns = np.arange(0, n, step)
    labels = traces.labels or ["none"] * len(traces.voxels)
    order = np.argsort([GROUPS.index(g) for g in labels], kind="stable")
    before, after = carpet_pixels(traces, order, columns)
    shown = [labels[i] for i in order]
    every = "" if step == 1 else f"; every {step}th volume"
    for y, pixels, title in (
            (before_y, before, "Before denoising: raw BOLD (each voxel z-scored)"),
            (after_y, after, "After denoising: cleaned BOLD (censored volumes red, dummy blue)")):
        out.append(f'<text x="{_LEFT}" y="{y - 6}">{title}; {len(order)} voxels{every}</text>')
        out.append(_image(png_bytes(pixels, _CARPET_PALETTE), _LEFT, y,
                          len(columns) * step * band, ch, extra=' class="carpet"'))
        out.append(_group_bar(shown, y, ch))
    out.append(_volume_ticks(n, axis_y, tr))
    return "".join(out) + "</svg>"


# --------------------------------------------------------------------------- network maps


def _canonical(volumes: np.ndarray, affine: np.ndarray):
    """Reorient (…, x, y, z) arrays to RAS+ index order; return them and the new affine."""
    import nibabel as nib

    ornt = nib.orientations.io_orientation(affine)
    shape = volumes.shape[-3:]
    out = volumes
    for axis in range(3):  # flips, then the axis permutation (as apply_orientation does)
        if ornt[axis, 1] == -1:
            out = np.flip(out, axis=out.ndim - 3 + axis)
    order = [int(a) for a in np.argsort(ornt[:, 0])]
    lead = list(range(out.ndim - 3))
    out = np.transpose(out, lead + [len(lead) + a for a in order])
    return out, affine @ nib.orientations.inv_ornt_aff(ornt, shape)


def _colour(values: np.ndarray) -> np.ndarray:
    """Diverging colours of values in [-1, 1] (NaN -> mid grey)."""
    t = np.clip(np.nan_to_num(values, nan=0.0), -1, 1)
    stops = np.linspace(-1, 1, len(_DIVERGING))
    rgb = np.stack([np.interp(t, stops, _DIVERGING[:, c]) for c in range(3)], axis=-1)
    rgb[np.isnan(values)] = 150
    return rgb


def _scale(values: np.ndarray) -> float:
    finite = np.abs(values[np.isfinite(values)])
    scale = float(np.percentile(finite, 99)) if finite.size else 0.0
    return scale if scale > 0 else 1.0


def map_montage(maps: dict, mask_img) -> tuple:
    """One RGB image of the four networks' maps (rows) in three slices (columns) through
    each network's canonical seed; returns it, each row's scale and slice coordinates."""
    from msnet.atlas import CANONICAL_SEEDS

    mask = np.asarray(mask_img.dataobj).astype(bool)
    vols = np.full((len(ANALYSIS_NETWORKS), *mask.shape), np.nan, np.float32)
    scales = []
    for k, net in enumerate(ANALYSIS_NETWORKS):
        values = np.asarray(maps[net], np.float32)
        scales.append(_scale(values))
        vols[k][mask] = values / scales[-1]
    vols, affine = _canonical(vols, mask_img.affine)
    mask = _canonical(mask, mask_img.affine)[0]
    seeds = np.linalg.inv(affine) @ np.array([[*CANONICAL_SEEDS[n][1], 1.0]
                                              for n in ANALYSIS_NETWORKS]).T
    box = [np.flatnonzero(mask.any(axis=tuple(b for b in range(3) if b != a))) for a in range(3)]
    if all(b.size for b in box):  # crop to the brain (one voxel of margin)
        low = [max(int(b[0]) - 1, 0) for b in box]
        crop = tuple(slice(lo, int(b[-1]) + 2) for lo, b in zip(low, box))
        vols, mask = vols[(slice(None), *crop)], mask[crop]
        seeds[:3] -= np.array(low, float)[:, None]
    nx, ny, nz = mask.shape
    height, gap = max(ny, nz), 2
    width = ny + 2 * nx + 2 * gap
    image = np.full((len(ANALYSIS_NETWORKS) * (height + gap) - gap, width, 3), 255, np.uint8)
    where = []
    for k, net in enumerate(ANALYSIS_NETWORKS):
        i, j, z = (int(np.clip(round(c), 0, s - 1)) for c, s in zip(seeds[:3, k], mask.shape))
        where.append(CANONICAL_SEEDS[net][1])
        panels = [(vols[k][i, :, :], mask[i, :, :]), (vols[k][:, j, :], mask[:, j, :]),
                  (vols[k][:, :, z], mask[:, :, z])]
        x = 0
        for values, inside in panels:
            rgb = np.where(inside[..., None], _colour(values), 255.0)
            rgb = np.flipud(np.transpose(rgb, (1, 0, 2)))  # rows: superior/anterior first
            top = k * (height + gap) + (height - rgb.shape[0])
            image[top: top + rgb.shape[0], x: x + rgb.shape[1]] = np.rint(rgb)
            x += rgb.shape[1] + gap
    return image, scales, where


def networks_svg(maps: dict, mask_img, qc: dict) -> str:
    """The four stage-2 maps with their names, scales and template correlations."""
    image, scales, where = map_montage(maps, mask_img)
    rows = len(ANALYSIS_NETWORKS)
    zoom = min(3.5, 520 / image.shape[1])
    w, h = image.shape[1] * zoom, image.shape[0] * zoom
    left, top = 150, 22
    units = (qc.get("connectivity") or {}).get("stage2_units")
    unit = {"psc": "%", "standardized": ""}.get(units, "")
    template_r = qc.get("dr_template_r") or {}
    out = [f'<svg id="networks" xmlns="http://www.w3.org/2000/svg" width="{_WIDTH}" '
           f'height="{top + h + 24:.0f}" viewBox="0 0 {_WIDTH} {top + h + 24:.0f}" '
           'font-size="12" font-family="sans-serif">',
           f'<text x="{left}" y="14">sagittal, coronal and axial slices through each '
           'network\'s seed (left hemisphere on the left)</text>',
           _image(png_bytes(image), left, top, w, h, pixelated=True, extra=' class="maps"')]
    row_h = h / rows
    for k, net in enumerate(ANALYSIS_NETWORKS):
        y = top + k * row_h + row_h / 2
        r = template_r.get(net)
        x, yy, z = (f"{c:g}" for c in where[k])
        out.append(f'<g class="network" data-network="{net}">'
                   f'<text x="{left - 10}" y="{y - 8:.1f}" text-anchor="end" font-weight="bold" '
                   f'font-size="14">{net}</text>'
                   f'<text x="{left - 10}" y="{y + 8:.1f}" text-anchor="end">template r '
                   f'{_num(r)}</text>'
                   f'<text x="{left + w + 10:.1f}" y="{y - 8:.1f}">scale \u00b1{_num(scales[k], 3)}'
                   f'{unit}</text>'
                   f'<text x="{left + w + 10:.1f}" y="{y + 8:.1f}">x {x}, y {yy}, z {z}</text>'
                   "</g>")
    bar = png_bytes(np.rint(_colour(np.linspace(-1, 1, 128))[None].repeat(8, axis=0)))
    out.append(_image(bar, left, top + h + 6, 160, 10))
    out.append(f'<text x="{left + 166}" y="{top + h + 15:.1f}">\u2212scale to +scale '
               '(grey: no signal)</text>')
    return "".join(out) + "</svg>"


# --------------------------------------------------------------------------- page

_STYLE = """
body{font-family:sans-serif;max-width:940px;margin:1.2em auto;padding:0 1em;color:#222}
h1{font-size:1.5em;margin-bottom:.2em} h2{font-size:1.15em;margin-top:1.4em}
.decision{padding:.6em 1em;font-size:1.1em}
.include{background:#e5f5eb;border-left:6px solid #1b9e77}
.exclude{background:#fdebe5;border-left:6px solid #d95f02}
table{border-collapse:collapse} th,td{padding:2px 12px 2px 0;text-align:left}
td.n{text-align:right} .note{color:#555;font-size:.92em}
svg{display:block;max-width:100%;height:auto}
"""


def _measures(qc: dict) -> str:
    n_cens = None
    if all(isinstance(qc.get(k), (int, float)) for k in ("n_volumes", "n_dummy", "n_kept")):
        n_cens = qc["n_volumes"] - qc["n_dummy"] - qc["n_kept"]
    vif = {k: v for k, v in (qc.get("dr_vif") or {}).items() if v is not None}
    worst = max(vif, key=vif.get) if vif else None
    thresholds = qc.get("qc_thresholds") or {}
    rows = [
        ("Mean FD (mm)", _num(qc.get("mean_fd"), 3), thresholds.get("max_mean_fd"), "at most {}"),
        ("Max FD (mm)", _num(qc.get("max_fd"), 2), None, ""),
        ("Volumes", f"{qc.get('n_volumes')} ({qc.get('n_dummy')} dummy)", None, ""),
        ("Censored volumes", f"{n_cens} ({_num(qc.get('pct_censored'), 1)} %)",
         thresholds.get("max_pct_censored"), "at most {} %"),
        ("Minutes kept", _num(qc.get("minutes_kept"), 1), thresholds.get("min_minutes_kept"),
         "at least {}"),
        ("Median tSNR", _num(qc.get("tsnr_median"), 1), None, ""),
        ("Mean std DVARS", _num(qc.get("mean_std_dvars"), 2), None, ""),
        ("Flat voxels (%)", _num(qc.get("pct_flat_voxels"), 2),
         thresholds.get("max_pct_flat_voxels"), "at most {}"),
        ("Largest stage-2 VIF", f"{_num(vif[worst], 2)} ({worst})" if worst else "\u2013",
         (qc.get("connectivity") or {}).get("max_vif"), "at most {}"),
    ]
    body = "".join(
        f"<tr><th>{name}</th><td class=\"n\">{html.escape(str(value))}</td><td class=\"note\">"
        + (rule.format(f"{limit:g}") if limit is not None and rule else "") + "</td></tr>"
        for name, value, limit, rule in rows)
    return f'<table id="measures"><tbody>{body}</tbody></table>'


def subject_page(qc: dict, maps: dict, mask_img, traces: QcTraces | None, tr=None) -> str:
    """The subject's QC page as HTML (see the module docstring)."""
    pid = html.escape(str(qc.get("participant_id", "subject")))
    study = qc.get("study_id")
    where = f" (study {html.escape(str(study))})" if study else ""
    if qc.get("include"):
        decision = '<p id="decision" class="decision include"><strong>Included</strong></p>'
    else:
        reason = html.escape(str(qc.get("exclusion_reason") or "no reason recorded"))
        decision = (f'<p id="decision" class="decision exclude"><strong>Excluded:</strong> '
                    f"{reason}</p>")
    parts = [f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
             f"<title>QC {pid}{where}</title><style>{_STYLE}</style></head><body>",
             f"<h1>{pid}{where}</h1>", decision, "<h2>QC measures</h2>", _measures(qc),
             '<p class="note">Right column: the QC rule (config <code>qc</code>, '
             "<code>connectivity.max_vif</code>); a subject breaking one is excluded.</p>",
             "<h2>Motion and signal over time</h2>"]
    if traces is None:
        parts.append('<p class="note">No time series: the data could not be read.</p>')
    else:
        parts.append(timeseries_svg(traces, tr))
        parts.append(
            '<p class="note">FD: framewise displacement (Power et al. 2012); std DVARS: '
            "standardised DVARS. Carpets: " + str(len(traces.voxels)) + " voxels spread "
            "evenly over the analysis mask, grouped (coloured bar) by the network whose "
            "template covers them; \u201cno network\u201d is mostly white matter and "
            "ventricles. Before: raw BOLD; after: confounds regressed, filtered and censored "
            "(what dual regression used).</p>")
    parts.append("<h2>Network maps (dual-regression stage 2)</h2>")
    parts.append(networks_svg(maps, mask_img, qc))
    parts.append('<p class="note">Each map is scaled to its own 99th percentile of |value| '
                 "(the scale printed beside it).</p></body></html>\n")
    return "".join(parts)


def write_subject_page(path, qc: dict, maps: dict, mask_img, traces: QcTraces | None,
                       tr=None) -> None:
    """Write :func:`subject_page` atomically (ASCII, non-ASCII as character references)."""
    from msnet.io.atomic import write_text

    text = subject_page(qc, maps, mask_img, traces, tr)
    write_text(text.encode("ascii", "xmlcharrefreplace").decode("ascii"), path)
