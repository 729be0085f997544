"""The HTML report (DESIGN stage 6): every result of the run in one self-contained page.

* :func:`compare_with_published` – is each published MS-vs-HC finding recovered by a map?
* :func:`methods_text` – a methods paragraph written from the configuration actually used
  (and, in the report, from the options the stages recorded in their outputs), citing only
  the works those options used; :func:`citations_bib` – their BibTeX entries with DOIs;
* :func:`build_report` – the one function the Snakemake rule ``report`` calls: reads all
  result files, draws every figure (:mod:`msnet.plotting`) into ``results/figures/`` and
  writes ``results/report.html`` (PNG figures embedded as base64, inline CSS, no external
  resources: it opens offline and can be mailed as one file),
  ``results/report_desc-published_comparison.tsv`` and ``results/citations.bib``.

Conclusions on the published clinical null (disease duration, EDSS) come from
multiplicity-corrected results only (FDR of the pooled clinical models and of the
meta-regression) and are stated once, identically, in the clinical and meta-regression
sections (:meth:`_Report.clinical_verdict`).

The page is written from plain strings (no template engine) and holds no time stamp, so the
same results give the same bytes.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from msnet import ANALYSIS_NETWORKS, __version__
from msnet.errors import MsnetInputError
from msnet.formatting import TEXT_COLUMNS, column_label, format_value, p_relation
from msnet.derivatives import write_table
from msnet.io.atomic import write_text
from msnet.io.plan import SPACE, map_name, space_of

LOG = logging.getLogger(__name__)

SECTIONS = (
    ("dataset-qc", "Dataset & QC overview"),
    ("published-findings", "Published findings vs msnet"),
    ("network-meta", "Network-level meta-analysis"),
    ("meta-regression", "Meta-regression"),
    ("voxelwise", "Voxelwise results"),
    ("clinical", "Clinical associations"),
    ("meta-vs-mega", "Meta vs mega"),
    ("literature", "Coordinate-based and hybrid meta-analysis"),
    ("edges", "Edge-level differences"),
    ("motion-qcfc", "Motion (QC-FC)"),
    ("methods", "Methods"),
)
"""(id, title) of the report's sections, in order; every id is an ``<h2 id=...>``."""

FIGURES = {
    "qc_overview": "qc_desc-overview",
    "study_effects": "group_desc-studyeffects",
    "glass_brain_pooled": "pooled_network-{net}_desc-glassbrain",
    "glass_brain_meta": "meta_network-{net}_desc-glassbrain",
    "forest": "meta_network-{net}_desc-forest",
    "funnel": "meta_network-{net}_desc-funnel",
    "bubble": "meta_network-{net}_desc-bubble",
    "clinical_scatter": "clinical_desc-scatter",
    "qcfc_benchmarks": "qcfc_desc-benchmarks",
    "qcfc_fd": "qcfc_desc-fdgroup",
}
"""Figure kind -> file stem in the figures folder (``.png`` and ``.svg`` are written)."""

SOFTWARE = ("msnet", "nilearn", "nibabel", "statsmodels", "nimare", "pymare", "numpy",
            "scipy", "pandas", "matplotlib", "snakemake")
"""Distributions whose versions :func:`software_versions` reports."""

@dataclass(frozen=True)
class Reference:
    """One cited work: in-text citation, list entry and BibTeX entry come from these fields.

    Every DOI was checked against a published copy of the reference; a work whose DOI
    could not be confirmed has none rather than a guessed one.
    """

    key: str
    cite: str
    authors: tuple
    title: str
    venue: str
    year: int | None = None
    volume: str = ""
    pages: str = ""
    doi: str = ""
    kind: str = "article"
    url: str = ""
    note: str = ""
    et_al: bool = False

    def text(self) -> str:
        """Vancouver-style list entry."""
        who = ", ".join(self.authors) + (", et al" if self.et_al else "")
        out = (f"{who}. " if who else "") + f"{self.title}. {self.venue}"
        if self.year:
            out += f". {self.year}"
            if self.volume:
                out += f";{self.volume}"
            if self.pages:
                out += f":{self.pages}"
        out += "."
        if self.doi:
            out += f" doi:{self.doi}"
        elif self.url:
            out += f" {self.url}"
        if self.note:
            out += f" ({self.note})"
        return out

    def bibtex(self) -> str:
        """BibTeX entry (UTF-8)."""
        names = [_bib_name(a) for a in self.authors] + (["others"] if self.et_al else [])
        fields = ([("author", " and ".join(names))] if names else []) + [
            ("title", "{" + self.title + "}")]
        fields.append(("journal" if self.kind == "article" else
                       "booktitle" if self.kind == "inproceedings" else "howpublished",
                       self.venue))
        fields += [(k, str(v)) for k, v in (("year", self.year), ("volume", self.volume),
                                            ("pages", self.pages.replace("-", "--")),
                                            ("doi", self.doi), ("url", self.url),
                                            ("note", self.note)) if v]
        body = ",\n".join(f"  {k} = {{{v}}}" for k, v in fields)
        return f"@{self.kind}{{{self.key},\n{body}\n}}\n"


def _bib_name(vancouver: str) -> str:
    """``"Esteban O"`` -> ``"Esteban, O."``; a group author stays one braced name."""
    last, _, initials = vancouver.rpartition(" ")
    if not last or not initials.isupper() or len(initials) > 3:
        return "{" + vancouver + "}"
    return f"{last}, " + " ".join(f"{c}." for c in initials)


REFERENCE_META_ANALYSIS = ("Disrupted and reorganized connectivity of brain networks in "
                           "multiple sclerosis: a systematic review and meta-analysis of "
                           "resting-state functional MRI")
"""Title of the meta-analysis msnet reproduces (J Neurol; 25 ICA studies, 1,524 MS / 886 HC)."""

_REFS = (
    Reference("jneurol_ms_rsfmri_meta", "J Neurol, \u2018Disrupted and reorganized connectivity "
              "of brain networks in multiple sclerosis\u2019", (),
              REFERENCE_META_ANALYSIS, "Journal of Neurology",
              note="the meta-analysis msnet reproduces; authors, year and DOI are not "
                   "recorded by msnet: complete them from the journal before citing"),
    Reference("esteban2019", "Esteban et al., 2019", ("Esteban O", "Markiewicz CJ",
                                                      "Blair RW"),
              "fMRIPrep: a robust preprocessing pipeline for functional MRI",
              "Nature Methods", 2019, "16", "111-116", "10.1038/s41592-018-0235-4",
              et_al=True),
    Reference("abraham2014", "Abraham et al., 2014", ("Abraham A", "Pedregosa F",
                                                      "Eickenberg M"),
              "Machine learning for neuroimaging with scikit-learn",
              "Frontiers in Neuroinformatics", 2014, "8", "14", "10.3389/fninf.2014.00014",
              et_al=True),
    Reference("power2012", "Power et al., 2012", ("Power JD", "Barnes KA", "Snyder AZ",
                                                  "Schlaggar BL", "Petersen SE"),
              "Spurious but systematic correlations in functional connectivity MRI networks "
              "arise from subject motion", "NeuroImage", 2012, "59", "2142-2154",
              "10.1016/j.neuroimage.2011.10.018"),
    Reference("nickerson2017", "Nickerson et al., 2017", ("Nickerson LD", "Smith SM",
                                                          "\u00d6ng\u00fcr D", "Beckmann CF"),
              "Using dual regression to investigate network shape and amplitude in "
              "functional connectivity analyses", "Frontiers in Neuroscience", 2017, "11",
              "115", "10.3389/fnins.2017.00115"),
    Reference("seitzman2020", "Seitzman et al., 2020", ("Seitzman BA", "Gratton C",
                                                        "Marek S"),
              "A set of functionally-defined brain regions with improved representation of "
              "the subcortex and cerebellum", "NeuroImage", 2020, "206", "116290",
              "10.1016/j.neuroimage.2019.116290", et_al=True),
    Reference("hedges1981", "Hedges, 1981", ("Hedges LV",),
              "Distribution theory for Glass's estimator of effect size and related "
              "estimators", "Journal of Educational Statistics", 1981, "6", "107-128",
              "10.3102/10769986006002107"),
    Reference("seabold2010", "Seabold & Perktold, 2010", ("Seabold S", "Perktold J"),
              "statsmodels: econometric and statistical modeling with Python",
              "Proceedings of the 9th Python in Science Conference", 2010, "", "92-96",
              "10.25080/Majora-92bf1922-011", kind="inproceedings"),
    Reference("winkler2014", "Winkler et al., 2014", ("Winkler AM", "Ridgway GR",
                                                      "Webster MA", "Smith SM", "Nichols TE"),
              "Permutation inference for the general linear model", "NeuroImage", 2014,
              "92", "381-397", "10.1016/j.neuroimage.2014.01.060"),
    Reference("smith2009", "Smith & Nichols, 2009", ("Smith SM", "Nichols TE"),
              "Threshold-free cluster enhancement: addressing problems of smoothing, "
              "threshold dependence and localisation in cluster inference", "NeuroImage",
              2009, "44", "83-98", "10.1016/j.neuroimage.2008.03.061"),
    Reference("zalesky2010", "Zalesky et al., 2010", ("Zalesky A", "Fornito A", "Bullmore ET"),
              "Network-based statistic: identifying differences in brain networks",
              "NeuroImage", 2010, "53", "1197-1207", "10.1016/j.neuroimage.2010.06.041"),
    Reference("benjamini1995", "Benjamini & Hochberg, 1995", ("Benjamini Y", "Hochberg Y"),
              "Controlling the false discovery rate: a practical and powerful approach to "
              "multiple testing", "Journal of the Royal Statistical Society: Series B", 1995,
              "57", "289-300", "10.1111/j.2517-6161.1995.tb02031.x"),
    Reference("viechtbauer2005", "Viechtbauer, 2005", ("Viechtbauer W",),
              "Bias and efficiency of meta-analytic variance estimators in the random-effects "
              "model", "Journal of Educational and Behavioral Statistics", 2005, "30",
              "261-293", "10.3102/10769986030003261"),
    Reference("dersimonian1986", "DerSimonian & Laird, 1986", ("DerSimonian R", "Laird N"),
              "Meta-analysis in clinical trials", "Controlled Clinical Trials", 1986, "7",
              "177-188", "10.1016/0197-2456(86)90046-2"),
    Reference("knapp2003", "Knapp & Hartung, 2003", ("Knapp G", "Hartung J"),
              "Improved tests for a random effects meta-regression with a single covariate",
              "Statistics in Medicine", 2003, "22", "2693-2710", "10.1002/sim.1482"),
    Reference("higgins2002", "Higgins & Thompson, 2002", ("Higgins JPT", "Thompson SG"),
              "Quantifying heterogeneity in a meta-analysis", "Statistics in Medicine", 2002,
              "21", "1539-1558", "10.1002/sim.1186"),
    Reference("viechtbauer2007", "Viechtbauer, 2007", ("Viechtbauer W",),
              "Confidence intervals for the amount of heterogeneity in meta-analysis",
              "Statistics in Medicine", 2007, "26", "37-52", "10.1002/sim.2514"),
    Reference("viechtbauer2010", "Viechtbauer, 2010", ("Viechtbauer W",),
              "Conducting meta-analyses in R with the metafor package",
              "Journal of Statistical Software", 2010, "36(3)", "1-48",
              "10.18637/jss.v036.i03"),
    Reference("egger1997", "Egger et al., 1997", ("Egger M", "Davey Smith G", "Schneider M",
                                                  "Minder C"),
              "Bias in meta-analysis detected by a simple, graphical test", "BMJ", 1997,
              "315", "629-634", "10.1136/bmj.315.7109.629"),
    Reference("pymare", "PyMARE developers", ("PyMARE developers",),
              "PyMARE: Python Meta-Analysis & Regression Engine", "Software",
              kind="misc", url="https://github.com/neurostuff/PyMARE"),
    Reference("makris2006", "Makris et al., 2006", ("Makris N", "Goldstein JM", "Kennedy D"),
              "Decreased volume of left and total anterior insular lobule in schizophrenia",
              "Schizophrenia Research", 2006, "83", "155-171", "10.1016/j.schres.2005.11.020",
              et_al=True),
    Reference("desikan2006", "Desikan et al., 2006", ("Desikan RS", "S\u00e9gonne F",
                                                      "Fischl B"),
              "An automated labeling system for subdividing the human cerebral cortex on MRI "
              "scans into gyral based regions of interest", "NeuroImage", 2006, "31",
              "968-980", "10.1016/j.neuroimage.2006.01.021", et_al=True),
    Reference("salo2023", "Salo et al., 2023", ("Salo T", "Yarkoni T", "Nichols TE"),
              "NiMARE: Neuroimaging Meta-Analysis Research Environment", "Aperture Neuro",
              2023, "3", "1-32", "10.52294/001c.87681", et_al=True),
    Reference("molder2021", "M\u00f6lder et al., 2021", ("M\u00f6lder F", "Jablonski KP",
                                                          "Letcher B"),
              "Sustainable data analysis with Snakemake", "F1000Research", 2021, "10", "33",
              "10.12688/f1000research.29032.2", et_al=True),
    Reference("johnson2007", "Johnson et al., 2007", ("Johnson WE", "Li C", "Rabinovic A"),
              "Adjusting batch effects in microarray expression data using empirical Bayes "
              "methods", "Biostatistics", 2007, "8", "118-127", "10.1093/biostatistics/kxj037"),
    Reference("ciric2017", "Ciric et al., 2017", ("Ciric R", "Wolf DH", "Power JD"),
              "Benchmarking of participant-level confound regression strategies for the "
              "control of motion artifact in studies of functional connectivity", "NeuroImage",
              2017, "154", "174-187", "10.1016/j.neuroimage.2017.03.020", et_al=True),
    Reference("parkes2018", "Parkes et al., 2018", ("Parkes L", "Fulcher B", "Y\u00fccel M",
                                                    "Fornito A"),
              "An evaluation of the efficacy, reliability, and sensitivity of motion correction "
              "strategies for resting-state functional MRI", "NeuroImage", 2018, "171",
              "415-436", "10.1016/j.neuroimage.2017.12.073"),
    Reference("fortin2018", "Fortin et al., 2018", ("Fortin JP", "Cullen N", "Sheline YI"),
              "Harmonization of cortical thickness measurements across scanners and sites",
              "NeuroImage", 2018, "167", "104-120", "10.1016/j.neuroimage.2017.11.024",
              et_al=True),
    Reference("radua2012", "Radua et al., 2012", ("Radua J", "Mataix-Cols D", "Phillips ML",
                                                  "El-Hage W", "Kronhaus DM", "Cardoner N",
                                                  "Surguladze S"),
              "A new meta-analytic method for neuroimaging studies that combines reported "
              "peak coordinates and statistical parametric maps", "European Psychiatry", 2012,
              "27", "605-611", "10.1016/j.eurpsy.2011.04.001"),
    Reference("albajes2019", "Albajes-Eizagirre et al., 2019", ("Albajes-Eizagirre A",
                                                               "Solanes A", "Vieta E",
                                                               "Radua J"),
              "Voxel-based meta-analysis via permutation of subject images (PSI): theory and "
              "implementation for SDM", "NeuroImage", 2019, "186", "174-184",
              "10.1016/j.neuroimage.2018.10.077"),
    Reference("eickhoff2012", "Eickhoff et al., 2012", ("Eickhoff SB", "Bzdok D", "Laird AR",
                                                        "Kurth F", "Fox PT"),
              "Activation likelihood estimation meta-analysis revisited", "NeuroImage", 2012,
              "59", "2349-2361", "10.1016/j.neuroimage.2011.09.017"),
    Reference("wager2007", "Wager et al., 2007", ("Wager TD", "Lindquist M", "Kaplan L"),
              "Meta-analysis of functional neuroimaging data: current and future directions",
              "Social Cognitive and Affective Neuroscience", 2007, "2", "150-158",
              "10.1093/scan/nsm015"),
    Reference("lancaster2007", "Lancaster et al., 2007", ("Lancaster JL", "Tordesillas-"
                                                          "Guti\u00e9rrez D", "Martinez M"),
              "Bias between MNI and Talairach coordinates analyzed using the ICBM-152 brain "
              "template", "Human Brain Mapping", 2007, "28", "1194-1205",
              "10.1002/hbm.20345", et_al=True),
)

REFERENCES = {r.key: r for r in _REFS}
"""Works :func:`methods_text` can cite (:class:`Reference`), by BibTeX key. A run's
reference list holds exactly those its methods text cites (:func:`cited_references`)."""


def _cite(*keys) -> str:
    """Parenthetical in-text citation of :data:`REFERENCES` ``keys``."""
    return "(" + "; ".join(REFERENCES[k].cite for k in keys) + ")"


def cited_references(text: str) -> list:
    """The :class:`Reference` objects whose citation occurs in ``text``, in list order
    (first author, then year)."""
    found = [r for r in _REFS if f"({r.cite}" in text or f"; {r.cite}" in text]
    return sorted(found, key=lambda r: (r.authors[0].lower() if r.authors else r.title.lower(),
                                        r.year or 0))


def citations_bib(text: str) -> str:
    """BibTeX of every work cited in a methods ``text`` (:func:`cited_references`)."""
    return "\n".join(r.bibtex() for r in cited_references(text))

NA_TEXT = "not available"


# --------------------------------------------------------------------------- published


def fwe_significant(logp, alpha: float = 0.05) -> np.ndarray:
    """Voxels with FWE p < ``alpha`` in a ``-log10 p`` map (signed or unsigned).

    The group stage writes ``sign(t) * -log10 p`` and the meta stage ``-log10 p``; both are
    handled by taking the absolute value. ``p`` equal to ``alpha`` (possible with
    permutation p-values, also after float32 rounding of the map) is not significant.
    """
    logp = np.abs(np.asarray(logp, float))
    with np.errstate(over="ignore", invalid="ignore"):
        p = 10.0 ** -logp
    return np.isfinite(logp) & (p < alpha * (1.0 - 1e-6))


def _load_img(img, what):
    import nibabel as nib

    if isinstance(img, (str, Path)):
        try:
            return nib.load(str(img))
        except (OSError, nib.filebasedimages.ImageFileError) as err:
            raise MsnetInputError(f"{img}: cannot read the {what} ({err}).") from err
    return img


def signed_local_maxima(stat) -> dict:
    """Local maxima of each sign of a 3-D statistic map.

    Returns
    -------
    dict
        ``{+1: (stat, local), -1: (-stat, local)}``, flattened: the signed map and whether
        each voxel is a local maximum of it (at least as large as its 26 neighbours) and > 0.
    """
    from scipy import ndimage

    peaks = {}
    for sign in (1, -1):
        signed = sign * np.asarray(stat, float)
        local = signed >= ndimage.maximum_filter(signed, size=3, mode="constant", cval=-np.inf)
        peaks[sign] = (signed.ravel(), (local & (signed > 0)).ravel())
    return peaks


def compare_with_published(stat_img, logp_fwe_img, network, alpha=0.05,
                           radius_mm=12.0) -> pd.DataFrame:
    """Check whether each published finding of ``network`` is recovered by a statistic map.

    A finding counts as found when the map has a local maximum of ``stat * direction``
    (a voxel at least as large as its 26 neighbours, and > 0: the published sign) that is
    FWE-significant (:func:`fwe_significant`) and lies within ``radius_mm`` of the published
    coordinate. When several do, the strongest is reported. When none does, ``note`` says
    what the map holds there (the strongest value of the published sign within the radius
    and its p), so a near miss is visible.

    Parameters
    ----------
    stat_img : path or nibabel image
        Signed statistic (pooled t or meta z; positive = MS > HC), in MNI space.
    logp_fwe_img : path or nibabel image
        ``-log10`` voxel-level FWE p on the same grid (signed or unsigned).
    network : str
        Analysis network whose findings (:func:`msnet.atlas.published_findings`) are checked.
    alpha : float
        FWE level.
    radius_mm : float
        Search radius around each published coordinate.

    Returns
    -------
    pandas.DataFrame
        One row per finding: ``finding, network, direction`` (``MS>HC``/``MS<HC``),
        ``published_label, representative_x, representative_y, representative_z`` (msnet's
        representative MNI coordinate of the published region, not a published value: the
        paper reports regions), ``found, peak_x, peak_y, peak_z, distance_mm`` (to the
        representative coordinate), ``statistic, peak_label`` (Harvard-Oxford), ``p_fwe,
        note``.
    """
    from msnet.atlas import harvard_oxford_label, published_findings

    stat_img = _load_img(stat_img, "statistic map")
    logp_img = _load_img(logp_fwe_img, "-log10 FWE p map")
    if stat_img.shape[:3] != logp_img.shape[:3] or not np.allclose(stat_img.affine,
                                                                   logp_img.affine, atol=1e-3):
        raise MsnetInputError(f"network {network}: the statistic map {stat_img.shape} and the "
                              f"FWE p map {logp_img.shape} are on different grids; pass the "
                              "two maps written together by one stage.")
    stat = np.asarray(stat_img.dataobj, np.float64).reshape(stat_img.shape[:3])
    stat = np.where(np.isfinite(stat), stat, 0.0)
    logp = np.abs(np.asarray(logp_img.dataobj, np.float64).reshape(stat.shape))
    sig = fwe_significant(logp, alpha).ravel()
    ijk = np.indices(stat.shape).reshape(3, -1).T
    coords = ijk @ stat_img.affine[:3, :3].T + stat_img.affine[:3, 3]
    peaks = signed_local_maxima(stat)
    rows = []
    for f in published_findings().query("network == @network").itertuples():
        center = np.array([f.x, f.y, f.z])
        signed, local = peaks[int(f.direction)]
        near = np.linalg.norm(coords - center, axis=1) <= radius_mm
        cand = np.flatnonzero(local & near & sig)
        word = "MS>HC" if f.direction > 0 else "MS<HC"
        row = {"finding": f.finding, "network": f.network, "direction": word,
               "published_label": f.label, "representative_x": f.x, "representative_y": f.y,
               "representative_z": f.z, "found": bool(cand.size), "peak_x": np.nan,
               "peak_y": np.nan, "peak_z": np.nan, "distance_mm": np.nan,
               "statistic": np.nan, "peak_label": "", "p_fwe": np.nan, "note": ""}
        if cand.size:
            k = cand[np.argmax(signed[cand])]
            xyz = coords[k]
            row.update(peak_x=xyz[0], peak_y=xyz[1], peak_z=xyz[2],
                       distance_mm=float(np.linalg.norm(xyz - center)),
                       statistic=float(stat.ravel()[k]), peak_label=harvard_oxford_label(xyz),
                       p_fwe=float(10.0 ** -logp.ravel()[k]))
        else:
            pool = np.flatnonzero(near & (signed > 0))
            if pool.size:
                k = pool[np.argmax(signed[pool])]
                row["note"] = (f"no FWE-significant {word} peak within {radius_mm:g} mm; "
                               f"strongest {word} value there {stat.ravel()[k]:.2f} "
                               f"(p_FWE {10.0 ** -logp.ravel()[k]:.3g})")
            else:
                row["note"] = f"no {word} value within {radius_mm:g} mm"
        rows.append(row)
    return pd.DataFrame(rows, columns=COMPARISON_COLUMNS[1:])


COMPARISON_COLUMNS = ["analysis", "finding", "network", "direction", "published_label",
                      "representative_x", "representative_y", "representative_z", "found",
                      "peak_x", "peak_y", "peak_z", "distance_mm", "statistic", "peak_label",
                      "p_fwe", "note"]
"""Columns of ``report_desc-published_comparison.tsv`` (``analysis``: ``meta`` or ``mega``;
``representative_*``: msnet's chosen MNI coordinate of each published region, which the
reference meta-analysis reports by name only)."""


def published_comparison(meta_maps: dict | None, pooled_maps: dict | None, alpha_meta=0.05,
                         alpha_mega=0.05, radius_mm=12.0) -> pd.DataFrame:
    """Run :func:`compare_with_published` on the meta z maps and the pooled t maps.

    Parameters
    ----------
    meta_maps, pooled_maps : dict or None
        Network -> ``{"z"|"t": path, "logp_fwe"|"logpfwe": path}`` (see :func:`build_report`).
    alpha_meta, alpha_mega : float
        FWE levels of the two analyses.
    radius_mm : float

    Returns
    -------
    pandas.DataFrame
        One row per finding and analysis (:data:`COMPARISON_COLUMNS`); findings of a network
        without maps are ``found = False`` with ``note`` "map not available".
    """
    from msnet.atlas import published_findings

    frames = []
    for analysis, maps, stat_key, alpha in (("meta", meta_maps, "z", alpha_meta),
                                            ("mega", pooled_maps, "t", alpha_mega)):
        for net in ANALYSIS_NETWORKS:
            entry = (maps or {}).get(net) or {}
            stat, logp = entry.get(stat_key), _logp_path(entry)
            if stat and logp and Path(stat).exists() and Path(logp).exists():
                table = compare_with_published(stat, logp, net, alpha, radius_mm)
            else:
                pub = published_findings().query("network == @net")
                table = pd.DataFrame({
                    "finding": pub["finding"], "network": net,
                    "direction": np.where(pub["direction"] > 0, "MS>HC", "MS<HC"),
                    "published_label": pub["label"], "representative_x": pub["x"],
                    "representative_y": pub["y"], "representative_z": pub["z"], "found": False,
                    "note": f"{analysis} map not available"})
            frames.append(table.assign(analysis=analysis))
    return pd.concat(frames, ignore_index=True).reindex(columns=COMPARISON_COLUMNS)


def _logp_path(entry: dict):
    """The FWE map of a maps entry (``logp_fwe`` as the meta stage names it, or ``logpfwe``)."""
    return entry.get("logp_fwe") or entry.get("logpfwe")


# --------------------------------------------------------------------------- QC


# --------------------------------------------------------------------------- methods


def software_versions() -> dict:
    """Installed versions of :data:`SOFTWARE` (``"not installed"`` when absent)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in SOFTWARE:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def _section_options(config: dict) -> dict:
    """Each stage's options: the config section merged over the module defaults."""
    from msnet import clinical, connectivity, denoise, group, meta, qc

    defaults = {"denoise": denoise.DEFAULT_OPTIONS, "qc": qc.DEFAULT_QC_OPTIONS,
                "connectivity": connectivity.DEFAULT_OPTIONS, "group": group.GROUP_DEFAULTS,
                "clinical": clinical.CLINICAL_DEFAULTS, "meta": meta.DEFAULT_OPTIONS}
    return {k: {**v, **(config.get(k) or {})} for k, v in defaults.items()}


def _join(items, word: str = "and") -> str:
    items = [str(i) for i in items]
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + f" {word} " + items[-1]


def _denoise_text(d: dict) -> str:
    if d["strategy"] != "custom":
        conf = (f"nilearn's '{d['strategy']}' confound strategy (load_confounds_strategy with "
                f"its preset parameters) {_cite('abraham2014')}")
    else:
        from msnet.denoise import confound_counts

        words = {"motion": "motion parameters", "wm_csf": "white-matter/CSF signals",
                 "global_signal": "global signal regressor(s)",
                 "compcor": f"{d['compcor']} CompCor components"}
        parts = [f"{n} {words[k]}" for k, n in confound_counts(d).items()]
        conf = (f"{_join(parts) if parts else 'no confound regressors'}, selected with nilearn's "
                f"load_confounds {_cite('abraham2014')}")
        if d["scrub"] is not None:
            conf += (f"; volumes with framewise displacement (FD) > {d['fd_threshold']} mm or "
                     f"standardised DVARS > {d['std_dvars_threshold']} were censored "
                     f"(with segments shorter than {d['scrub']} volumes)")
    band = [f"high-pass {d['high_pass']} Hz" if d["high_pass"] else None,
            f"low-pass {d['low_pass']} Hz" if d["low_pass"] else None]
    band = [b for b in band if b]
    steps = (["linear detrending"] if d["detrend"] else []) + (
        [f"Butterworth filtering ({', '.join(band)})"] if band else [])
    smooth = (f"spatially smoothed with a {d['smoothing_fwhm']:g} mm FWHM Gaussian kernel"
              if d["smoothing_fwhm"] else "not smoothed")
    return (f"Non-steady-state volumes were discarded and each run was denoised with {conf}. "
            f"Signals were {smooth} and cleaned in one step with the semantics of nilearn's "
            f"signal.clean ({_join(steps + ['confound regression'])}; censored volumes "
            "interpolated before filtering and removed afterwards).")


_READABLE = {"mean_fd": "mean FD", "disease_duration": "disease duration", "edss": "EDSS",
             "t2lv": "T2 lesion volume", "age": "age", "sex": "sex",
             "duration": "mean disease duration", "pctfemale": "% female"}


def _adjusted(used_note) -> str:
    used, note = used_note
    return (_names(used) if used else "no covariates") + (f" ({note})" if note else "")


def _names(items, prefix="") -> str:
    """Readable, joined variable names (``disease_duration`` -> ``disease duration``)."""
    return _join([prefix + _READABLE.get(i, i) if i not in ("duration", "pctfemale")
                  else _READABLE[i] for i in items])


def covariates_in_models(tables, configured) -> tuple[list, str]:
    """The covariates the fitted models actually adjusted for, from their result tables.

    Parameters
    ----------
    tables : list of pandas.DataFrame
        Result tables with ``covariates`` (comma-joined names of each model's covariates)
        and ``status`` columns (group or clinical, per study and pooled).
    configured : list of str
        The configured covariates (their order is kept).

    Returns
    -------
    used : list of str
        Covariates present in at least one fitted (``status == ok``) model.
    note : str
        Empty when every fitted model had every used covariate; else which covariates
        were missing from how many models.
    """
    models = []
    for table in tables:
        if table is None or "covariates" not in table or "status" not in table:
            continue
        for value in table.loc[table["status"] == "ok", "covariates"]:
            models.append([c for c in str(value).split(",") if c and c not in ("nan", "n/a")]
                          if isinstance(value, str) else [])
    seen = [c for m in models for c in m]
    used = [c for c in configured if c in seen] + [c for c in dict.fromkeys(seen)
                                                   if c not in configured]
    gaps = [f"{_names([c])} was not in {sum(c not in m for m in models)} of {len(models)}"
            for c in used if any(c not in m for m in models)]
    never = [c for c in configured if c not in used]
    notes = ([f"{'; '.join(gaps)} models (missing, constant or too few degrees of freedom "
              "in a study)"] if gaps else [])
    if never and models:
        notes.append(f"{_names(never)} could not be used in any model")
    return used, "; ".join(notes)


def _inference_text(o: dict, alpha_name: str = "alpha") -> str:
    """Noun phrase describing the voxelwise inference options ``o`` (group or clinical)."""
    fdr = f"Benjamini-Hochberg FDR q-values of the parametric p {_cite('benjamini1995')}"
    n_perm = int(o["n_permutations"])
    if n_perm <= 0:
        return f"parametric p-values only (n_permutations: 0, no FWE correction), with {fdr}"
    tests = ["voxel-level max-t family-wise error (FWE)"]
    if o.get("cluster_forming_p"):
        tests.append(f"cluster-size FWE (cluster-forming p < {o['cluster_forming_p']:g})")
    if o.get("tfce"):
        tests.append(f"threshold-free cluster enhancement (TFCE; "
                     f"{REFERENCES['smith2009'].cite}) FWE")
    within = " within study" if o.get("permute_within_study") else ""
    return (f"{n_perm} Freedman-Lane permutations{within} {_cite('winkler2014')} giving "
            f"{_join(tests)} corrected p-values "
            f"({'two' if o.get('two_sided', True) else 'one'}-sided, {alpha_name} = "
            f"{o['alpha']:g}), with {fdr}")


_STAGE2 = {
    "psc": ("stage 2 regressed each voxel's time series, scaled to percent of its mean "
            "signal, on the variance-normalised time courses of all networks (FSL's stage 2, "
            "fsl_glm --demean --des_norm, on percent-signal-change data), giving network "
            "amplitude maps in % signal change per standard deviation of the network time "
            "course (connectivity.stage2_units: psc)"),
    "standardized": ("stage 2 regressed each voxel's z-scored time series on the z-scored "
                     "time courses of all networks, giving maps of partial standardised "
                     "regression coefficients (connectivity.stage2_units: standardized; these "
                     "fall as voxel noise rises at a fixed network amplitude, so they mix "
                     "connectivity with temporal SNR and a group difference in noise or motion "
                     "shows as a connectivity difference)"),
}


def _qc_text(q: dict, c: dict) -> str:
    rules = [f"mean FD > {q['max_mean_fd']:g} mm" if q.get("max_mean_fd") is not None else None,
             f"more than {q['max_pct_censored']:g}% of volumes censored"
             if q.get("max_pct_censored") is not None else None,
             f"less than {q['min_minutes_kept']:g} min of data left"
             if q.get("min_minutes_kept") is not None else None,
             f"more than {q['max_pct_flat_voxels']:g}% of the brain-mask voxels with a "
             "constant (flat) BOLD signal" if q.get("max_pct_flat_voxels") is not None else None,
             f"an ill-conditioned dual regression (variance inflation factor of any network's "
             f"stage-2 coefficient > {c['max_vif']:g}, connectivity.max_vif: network time "
             "courses nearly collinear)" if c.get("max_vif") is not None else None]
    rules = [r for r in rules if r]
    return ("subjects were excluded when " + _join(rules, "or") + ", and a run whose BOLD "
            "is constant in every voxel was excluded as having no signal."
            if rules else "subjects were excluded only when their BOLD had no signal "
            "(constant in every voxel); no QC threshold was set.")


def _clinical_truth(config: dict) -> str:
    """What the simulation planted about disease duration and EDSS (simulate mode)."""
    from msnet.simulate import SIM_DEFAULTS

    s = {**SIM_DEFAULTS, **(config.get("simulate") or {})}
    if not s["clinical_slope"]:
        return ("no association of connectivity with disease duration or EDSS "
                "(simulate.clinical_slope: 0, the published null)")
    var = _READABLE.get(s["clinical_variable"], s["clinical_variable"])
    return (f"a slope of MS network amplitude on {var} (simulate.clinical_slope: "
            f"{s['clinical_slope']:g} per SD of {var})")


def methods_text(config: dict, versions: dict | None = None,
                 covariates_used: dict | None = None, space: str = SPACE) -> str:
    """Write the methods section from the configuration actually used.

    Every sentence is generated from the options (no fixed claim about an option): the
    denoising strategy, QC thresholds (with the dual-regression VIF and flat-voxel rules),
    stage-2 units, covariates, permutation counts, cluster-forming thresholds, TFCE (cited
    only when on), the τ² estimator and the meta-analytic test; a work is cited only where a
    sentence uses it, and the reference list holds exactly the works cited.

    Parameters
    ----------
    config : dict
        The validated workflow configuration (sections ``data``, ``simulate``, ``denoise``,
        ``qc``, ``connectivity``, ``group``, ``clinical``, ``meta``, optional ``report``);
        missing sections and keys take the stage modules' defaults. The report passes the
        options the stages recorded in their outputs (a subject's QC file, the meta-analysis
        table) in place of the configured ones.
    versions : dict, optional
        Package -> version (default :func:`software_versions`).
    covariates_used : dict, optional
        ``{"group": (used, note), "clinical": (used, note)}`` from
        :func:`covariates_in_models` on the result tables: the covariates the models actually
        had (default: the configured ones, when no result tables are at hand).
    space : str
        The template space of the analysed maps (their ``space-`` entity).

    Returns
    -------
    str
        Paragraphs separated by blank lines; the last paragraph starts with
        ``References`` and lists one reference per line (:func:`cited_references`).
    """
    from msnet.atlas import NUISANCE_NETWORKS

    config = config or {}
    covariates_used = covariates_used or {}
    versions = versions or software_versions()
    o = _section_options(config)
    d, q, c, g, cl, m = (o[k] for k in ("denoise", "qc", "connectivity", "group", "clinical",
                                       "meta"))
    data = config.get("data") or {}
    radius = float((config.get("report") or {}).get("radius_mm", 12.0))
    paras = []
    if data.get("mode", "simulate") == "simulate":
        s = config.get("simulate") or {}
        paras.append(
            "Data. The analysis ran on msnet's synthetic multi-study dataset, written as "
            f"fMRIPrep-like derivatives: {s.get('n_studies', 25)} studies with "
            f"{s.get('scale', 0.05):g} times the sample sizes of the studies of the reference "
            f"meta-analysis {_cite('jneurol_ms_rsfmri_meta')}, on a "
            f"{s.get('resolution_mm', 4)} mm MNI152 grid, with MS-vs-HC changes planted at "
            "msnet's representative coordinates of the published regions and "
            f"{_clinical_truth(config)}.")
    else:
        paras.append(
            f"Data. Resting-state fMRI of each study was preprocessed with fMRIPrep "
            f"{_cite('esteban2019')} and analysed in {space} space.")
    paras.append(
        f"Denoising and quality control. {_denoise_text(d)} FD {_cite('power2012')}, DVARS "
        f"and temporal SNR were computed per run; {_qc_text(q, c)} Every exclusion and its "
        "reason is listed in this report.")
    n_nuis = len(NUISANCE_NETWORKS)
    paras.append(
        f"Network connectivity. Network maps were obtained by dual regression "
        f"{_cite('nickerson2017')} against spatial templates built from the "
        f"300 functionally defined regions {_cite('seitzman2020')} (Gaussian blobs, sigma "
        f"{c['template_sigma_mm']:g} mm): stage 1 regressed each volume on all network "
        "templates (the default-mode, sensorimotor, visual and salience networks plus "
        f"{n_nuis} nuisance networks), {_STAGE2[c['stage2_units']]}. Within- and "
        "between-network connectivity was the mean Fisher z correlation between the time "
        "series of the networks' region spheres.")
    covs = _adjusted(covariates_used.get("group", (g["covariates"], "")))
    effect = (
        f"Hedges' g {_cite('hedges1981')} was the covariate-adjusted MS\u2212HC difference "
        "divided by the residual SD, times the exact small-sample correction J(df), with its "
        "exact variance c + (1 \u2212 (df \u2212 2)/(df J\u00b2)) g\u00b2 (c: the group "
        "coefficient's variance in units of the residual variance); it is unbiased whatever "
        "the covariate imbalance and is the quantity the pooled model estimates (g derived "
        "from the adjusted t would shrink towards zero by \u221a(1 \u2212 R\u00b2) when the "
        "groups differ in age or another covariate)"
        if g.get("effect_size", "beta") == "beta" else
        f"Hedges' g and its variance {_cite('hedges1981')} were derived from the "
        "covariate-adjusted t (d = t\u221a(1/n_MS + 1/n_HC), group.effect_size: t), which "
        "shrinks g towards zero by \u221a(1 \u2212 R\u00b2) when the groups differ in a "
        "covariate, so the per-study and pooled g are not on the same scale")
    paras.append(
        f"Group comparison. In each study, MS and HC were compared with ordinary least squares "
        f"adjusting for {covs}; {effect}. The pooled mega-analysis of all subjects used a "
        f"linear mixed model with a random intercept per study (statsmodels MixedLM; "
        f"{REFERENCES['seabold2010'].cite}; refitted with Powell's method then L-BFGS when "
        "the default gradient optimisers did not converge) at network level, with "
        "Benjamini-Hochberg FDR "
        "across metrics (within- and between-network metrics separately), and, voxelwise "
        "within each network's mask, ordinary least squares with study indicators and "
        f"{_inference_text(g)}. Studies with fewer than {g['min_per_group']} subjects in a "
        "group were left out of per-study statistics.")
    if g.get("harmonize", "none") == "combat":
        paras.append(_combat_text(g))
    ccov = _adjusted(covariates_used.get("clinical", (cl["covariates"], "")))
    paras.append(
        f"Clinical associations. Within MS, connectivity was regressed on "
        f"{_names(cl['variables'])} jointly, adjusting for {ccov} (each variable tested in "
        "turn; per study by ordinary least squares, pooled by a mixed model with a random "
        "study intercept), with Benjamini-Hochberg FDR across metrics and variables (within- "
        "and between-network metrics separately) at q < "
        f"{cl['alpha']:g}"
        + (f"; voxelwise models of {_names(cl['voxelwise_variables'])} used "
           f"{_inference_text(cl)}." if cl["voxelwise_variables"] else "."))
    paras.append(_meta_text(m))
    if (config.get("qcfc") or {}).get("enabled", True) and "qcfc" in config:
        paras.append(_qcfc_text(config))
    nbs = config.get("nbs") or {}
    if nbs.get("enabled"):  # msnet.nbs ran: its paragraph, with its citations
        from msnet.nbs import nbs_methods_text

        paras.append(nbs_methods_text(nbs, g["covariates"], cl).format(
            zalesky=_cite("zalesky2010"), winkler=_cite("winkler2014")))
    from msnet.literature import LITERATURE_DEFAULTS, literature_enabled

    if literature_enabled({**config, "data": {"mode": "simulate", **data}}):
        lit = {**LITERATURE_DEFAULTS, **(config.get("literature") or {}), "radius_mm": radius}
        paras.append(literature_text(lit, m, data.get("mode", "simulate") != "literature",
                                     data.get("mode", "simulate") == "simulate",
                                     versions.get("nimare", "")))
    paras.append(
        "Comparison with the published findings. The reference meta-analysis "
        f"{_cite('jneurol_ms_rsfmri_meta')} reports regions, not a coordinate table; msnet "
        "gives each published region a representative MNI coordinate of its own choosing "
        "(bilateral precentral split into left and right). A finding was counted as recovered "
        "when the pooled t map or the meta-analytic z map had a local maximum "
        f"(26-neighbourhood) of the published sign within {radius:g} mm of that coordinate, "
        "significant at voxel-level FWE p < "
        + (f"{g['alpha']:g}" if g["alpha"] == m["alpha"]
           else f"{g['alpha']:g} (mega) or {m['alpha']:g} (meta)")
        + "; peaks are labelled with the Harvard-Oxford cortical atlas "
        f"{_cite('makris2006', 'desikan2006')} as shipped with NiMARE {_cite('salo2023')}.")
    soft = ", ".join(f"{name} {versions.get(name, 'n/a')}" for name in SOFTWARE
                     if name in versions)
    paras.append(f"Software. {soft}; nilearn {_cite('abraham2014')} for confounds, signal "
                 f"cleaning and plotting; the workflow is run by Snakemake "
                 f"{_cite('molder2021')}. Random seed {config.get('seed', 'default')}.")
    body = "\n\n".join(paras)
    refs = cited_references(body)
    return body + "\n\nReferences\n" + "\n".join(r.text() for r in refs)


def _combat_text(g: dict) -> str:
    """The harmonisation paragraph (``group.harmonize: combat``)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        lib = f"neuroHarmonize {version('neuroHarmonize')}"
    except PackageNotFoundError:
        lib = "neuroHarmonize"
    return (
        "Harmonisation. Beside the pooled models above, the same pooled models were fitted "
        f"after ComBat harmonisation with {lib} {_cite('johnson2007', 'fortin2018')} of the "
        "network-level metrics (jointly) and of each network's stage-2 maps over the voxels of "
        "its analysis mask, with the studies.tsv site of each study as batch (the study itself "
        f"where no site was given) and group, the covariates ({_names(g['covariates'])}) and "
        "the clinical variables present "
        "(disease duration, EDSS, T2 lesion volume; centred on the MS mean and 0 for HC) "
        "preserved as covariates, so that the MS effect and the within-MS clinical slopes are "
        "kept. Additive and multiplicative site effects were shrunk towards their site-wide "
        "priors by parametric empirical Bayes; the shrinkage per site is tabulated in this "
        "report. The meta-analysis used the per-study (unharmonised) effect sizes.")


SDM_DEPARTURES = (
    "study maps are the midpoint of the recreated lower and upper bounds (AES-SDM's single "
    "recreation), not SDM-PSI's maximum-likelihood multiple imputation from truncated normal "
    "distributions",
    "overlapping peaks of one sign take the strongest kernel value instead of AES-SDM's "
    "distance-weighted average",
    "the kernel is restricted to the network's analysis mask rather than a grey-matter "
    "template, and is isotropic unless a per-axis FWHM is given (SDM's anisotropy follows "
    "grey-matter correlation templates)",
    "tau\u00b2 is estimated by the meta-analysis's own estimator rather than SDM's "
    "method-of-moments (DL) one",
    "family-wise error comes from sign flips of whole study maps (exchangeable under the null "
    "when a study reports positive and negative peaks alike) instead of SDM-PSI's permutation "
    "of imputed subject images; its calibration over simulated null literatures is tested",
)
"""Every departure of msnet's SDM-style estimator from AES-SDM / SDM-PSI (the same list as
:func:`msnet.literature.sdm_meta`'s docstring), stated in the methods text."""


def literature_text(lit: dict, m: dict, hybrid: bool, simulated: bool,
                    nimare_version: str = "") -> str:
    """The coordinate-based and hybrid meta-analysis paragraph (:mod:`msnet.literature`) from
    the ``literature`` options and the resolved ``meta`` options used.

    Parameters
    ----------
    lit : dict
        The ``literature`` section (with ``radius_mm``, the report's search radius).
    m : dict
        The ``meta`` options (estimator, test, alpha, cluster threshold).
    hybrid : bool
        Image studies entered a hybrid analysis.
    simulated : bool
        The demo: the peaks were published from the simulated studies' t maps.
    """
    from msnet.literature import REPORT_MIN_CLUSTER_MM3

    if simulated:
        source = (
            "Each simulated study's MS-vs-HC t map of each network was also published as a "
            "paper would print it: one peak (the largest |t|) per cluster of one-sided "
            "uncorrected p < 0.001 with the study's degrees of freedom and at least "
            f"{REPORT_MIN_CLUSTER_MM3:g} mm\u00b3 (k \u2265 10 voxels of 2 mm), with the "
            "study's sample sizes and mean moderators.")
    else:
        source = (
            "Peak coordinates, statistics and sample sizes came from the peaks and literature "
            "studies tables; Talairach coordinates were converted to MNI with the inverse of "
            f"Lancaster's icbm2tal transform {_cite('lancaster2007')}, z and p values to t "
            "with the study's n_MS + n_HC \u2212 2 degrees of freedom.")
    est = "REML" if m["method"] == "REML" else "DerSimonian-Laird"
    test = "Knapp-Hartung" if m["knapp_hartung"] else "Wald z"
    fwhm = lit["fwhm_mm"]
    fwhm = (f"{fwhm:g} mm" if np.isscalar(fwhm) else
            "(" + ", ".join(f"{v:g}" for v in fwhm) + ") mm along x, y, z")
    bound = (" plus the variance of a uniform draw between the bounds (the many-imputation "
             "limit of Rubin's rules)" if lit["bound_variance"] else "")
    perm = int(lit["n_permutations"])
    text = (
        f"Coordinate-based and hybrid meta-analysis. {source} Per network and direction, "
        f"activation likelihood estimation (ALE; {REFERENCES['eickhoff2012'].cite}) and "
        f"multilevel kernel density analysis (MKDA; {REFERENCES['wager2007'].cite}) were run "
        f"with NiMARE {nimare_version} {_cite('salo2023')} with its default kernels and "
        f"voxel-level family-wise error from {int(lit['n_iters'])} Monte-Carlo relocations of "
        "the peaks. msnet's SDM-style estimator, after AES-SDM and SDM-PSI "
        f"{_cite('radua2012', 'albajes2019')}, converted each peak's t to Hedges' g, "
        f"recreated each study's lower- and upper-bound maps with a Gaussian kernel of FWHM "
        f"{fwhm} within the network mask (far from its peaks a study's effect lay within "
        "\u00b1 the g of a t at its reporting threshold) and took their midpoint as the "
        "study's map, with the sampling variance of the recreated g" + bound + "; a study "
        "without peaks in a network entered with g = 0. The maps were pooled at every voxel "
        f"with the meta-analysis's random-effects model ({est}, {test}), with FWE from "
        f"{perm} sign flips of whole study maps (voxel maximum, and cluster size at two-sided "
        f"p < {m['cluster_threshold']:g}); voxelwise meta-regressions on "
        f"{_names(lit['moderators'], 'mean ')} used FWE from {perm} permutations of the "
        "moderator across studies. ")
    if hybrid:
        text += ("In the hybrid analysis the studies with images entered with their own g and "
                 "var(g) maps and the others with their recreated maps"
                 + (" (every other simulated study as images)" if simulated else "") + ". ")
    text += ("Departures from SDM: " + "; ".join(f"({i}) {d}" for i, d in
                                                 enumerate(SDM_DEPARTURES, start=1)) + ".")
    if hybrid:
        text += (" Each method was compared with the image-based meta-analysis of the same "
                 "studies: published locations recovered (FWE-significant peak of the "
                 f"published sign within {lit['radius_mm']:g} mm), Dice overlap of the "
                 f"FWE-significant voxels (p < {m['alpha']:g}, same sign)"
                 + (", and significant peaks farther than the search radius from every "
                    "planted location of their sign (false positives against the simulation's "
                    "ground truth)" if simulated else "") + ".")
    return text


def literature_methods_text(lit: dict, m: dict, hybrid: bool, simulated: bool) -> str:
    """:func:`literature_text` with the NiMARE version and its reference list (the text file
    literature mode writes beside its results)."""
    body = literature_text(lit, m, hybrid, simulated, software_versions().get("nimare", ""))
    return body + "\n\nReferences\n" + "\n".join(r.text() for r in cited_references(body))


def _qcfc_text(config: dict) -> str:
    """The motion-benchmark paragraph (``qcfc``) from the options actually used."""
    from msnet.qcfc import DEFAULT_OPTIONS, describe_strategy, resolve_strategies

    q = {**DEFAULT_OPTIONS, **(config.get("qcfc") or {})}
    strategies = resolve_strategies(q, config.get("denoise"))
    listed = "; ".join(f"{name} ({describe_strategy(o)})" for name, o in strategies.items())
    main = next(iter(strategies))
    return (
        "Motion benchmarks (QC-FC). Following "
        f"{_cite('ciric2017', 'parkes2018')}, the main analysis's denoising ('{main}') was "
        + (f"compared with {len(strategies) - 1} other strategies on the same subjects: "
           f"{listed}. Each subject's BOLD was read once and the Seitzman-300 ROI means of the "
           "smoothed, uncleaned data were cleaned with each strategy (the cleaning is one "
           "linear operator applied alike to every voxel, so it commutes with the ROI mean); "
           "the main strategy's FC is the analysis's own. "
           if len(strategies) > 1 else
           f"benchmarked alone ({listed}; with ICA-AROMA's BOLD the other strategies' BOLD is "
           "not read). ")
        + "For every edge, QC-FC was the partial "
        "correlation of its Fisher z with mean FD across the included subjects, controlling "
        f"for {_names(q['covariates']) if q['covariates'] else 'no covariate'} and study "
        "(one indicator per study); per strategy, the % of edges with a significant QC-FC at "
        f"p < {q['alpha']:g} uncorrected and after Benjamini-Hochberg FDR "
        f"{_cite('benjamini1995')}, the median |QC-FC|, its distance dependence (Spearman "
        "correlation with the Euclidean distance between ROI centres) and the temporal "
        "degrees of freedom lost (regressors + censored volumes) are reported. A strategy's "
        f"QC-FC was called acceptable when at most {q['max_pct_fdr']:g}% of edges had an "
        "FDR-significant QC-FC (msnet's threshold; the benchmark papers rank strategies "
        "without fixing one). MS and HC mean FD were compared with Welch's t test, the "
        "Mann-Whitney U test and an OLS with study indicators.")


def _meta_text(m: dict) -> str:
    """The meta-analysis paragraph from the resolved ``meta`` options."""
    est = (f"restricted maximum likelihood (REML; {REFERENCES['viechtbauer2005'].cite})"
           if m["method"] == "REML" else
           f"the DerSimonian-Laird estimator {_cite('dersimonian1986')}")
    test = (f"Knapp-Hartung t tests {_cite('knapp2003')} (chosen over Wald z tests, which "
            "treat the estimated tau\u00b2 as known and reject a true null too often with "
            "about ten studies: 0.075-0.081 at alpha 0.05 against 0.055-0.057 in msnet's "
            "8,000 null simulations with k = 10; z tests were used where all effects were "
            "identical, which leaves Knapp-Hartung no residual variance)"
            if m["knapp_hartung"] else "Wald-type z tests")
    n_perm = int(m["n_permutations"])
    level = round(100 * (1 - float(m["alpha"])), 6)
    mods = _names(m["moderators"], "mean ")
    if n_perm > 0:
        reg_p = (f"p-values from {n_perm} permutations of the moderators across studies "
                 f"(all k! orders, an exact p, when k! \u2264 {n_perm}), as metafor's "
                 "permutest")
        vox = (f"FWE control by {n_perm} sign-flip permutations (all 2^k sign patterns when "
               f"2^k \u2264 {n_perm}) of the voxel-level maximum and of the size of clusters "
               f"formed at two-sided p < {m['cluster_threshold']:g}")
        which = "permutation p"
    else:
        reg_p = "parametric p-values (meta.n_permutations: 0, no permutation test)"
        vox = (f"no permutation FWE (meta.n_permutations: 0; clusters formed at two-sided "
               f"p < {m['cluster_threshold']:g} carry no corrected p)")
        which = "parametric p"
    return (
        "Meta-analysis. Per-study Hedges' g were pooled with random-effects models, between-"
        f"study variance tau\u00b2 by {est}, with {test}, Cochran's Q, I\u00b2 "
        f"{_cite('higgins2002')}, a Q-profile confidence interval for tau\u00b2 "
        f"{_cite('viechtbauer2007')} and {level:g}% prediction intervals, following the "
        f"conventions of metafor {_cite('viechtbauer2010')}; with fewer than "
        f"{m['min_studies']} studies a fixed-effect model was used. Sensitivity analyses were "
        "leave-one-study-out and Egger's regression test for small-study effects "
        f"{_cite('egger1997')}. Mixed-effects meta-regressions on the study-level moderators "
        f"{mods} (one at a time and jointly) were tested with {reg_p}; conclusions on "
        f"moderators use Benjamini-Hochberg FDR {_cite('benjamini1995')} of the {which} "
        "across metrics \u00d7 moderators (single-moderator and joint models, within- and "
        f"between-network metrics as separate families) at q < {m['alpha']:g}. Voxelwise, the "
        "same random-effects model was fitted at every voxel of each network mask "
        f"({'Knapp-Hartung t converted to z' if m['knapp_hartung'] else 'Wald z'}), with "
        f"{vox}, and FDR q maps. All random-effects fits used msnet's vectorised engine, "
        "checked in its unit tests against metafor's published results, PyMARE "
        f"{_cite('pymare')} and statsmodels.")


# --------------------------------------------------------------------------- HTML pieces


CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:0;color:#222;
line-height:1.45}
main{max-width:1320px;margin:0 auto;padding:1em 2em 4em}
nav{background:#f4f6f8;border-bottom:1px solid #dde;padding:.6em 2em;position:sticky;top:0;
z-index:2}
nav a{margin-right:1.2em;color:#2b5d8a;text-decoration:none;font-size:.92em}
h1{font-size:1.6em;margin-bottom:.2em}h2{border-bottom:2px solid #2b5d8a;padding-top:.6em}
h3{margin-top:1.6em}
div.tbl{overflow-x:auto;max-width:100%;margin:.6em 0}
table.tbl{border-collapse:collapse;font-size:.82em}
table.tbl th,table.tbl td{padding:3px 8px;border-bottom:1px solid #e3e3e3;text-align:right;
vertical-align:top;white-space:nowrap}
table.tbl th{background:#f4f6f8;white-space:normal;min-width:3.5em;vertical-align:bottom}
table.tbl td.key,table.tbl td.str,table.tbl th.key,table.tbl th.str{text-align:left}
table.tbl td.txt,table.tbl th.txt{text-align:left;white-space:normal;min-width:22em;
max-width:46em}
table.tbl tbody tr:nth-child(even){background:#fafbfc}
figure{margin:1em 0;display:table}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.9em;color:#444;display:table-caption;caption-side:bottom}
table.tbl td.wrap{white-space:normal;min-width:9em;text-align:left}
.row{display:flex;flex-wrap:wrap;gap:1.5em;align-items:flex-start}.row figure{flex:0 1 auto}
.na{color:#a33;font-style:italic}.note{color:#555;font-size:.9em}
.verdict{font-weight:600;border-left:3px solid #2b5d8a;padding-left:.6em}
.found{color:#1a7f37;font-weight:bold}.missed{color:#b42318;font-weight:bold}
details{margin:.6em 0}summary{cursor:pointer;color:#2b5d8a}
@media print{
@page{size:A4 landscape;margin:12mm}
body{font-size:9.5pt;color:#000}nav{display:none}main{max-width:none;padding:0}
h2{break-before:page;break-after:avoid}h3{break-after:avoid}
section:first-of-type h2{break-before:auto}
div.tbl{overflow:visible}table.tbl{font-size:8pt;width:100%}
table.tbl thead{display:table-header-group}tr,figure{break-inside:avoid}
table.tbl td.txt{min-width:0}
figure img{max-width:100%;border:none}summary{color:#000}
a{color:#000;text-decoration:none}
}
"""
PRINT_SCRIPT = ("<script>window.addEventListener('beforeprint',function(){"
                "document.querySelectorAll('details').forEach(function(d){d.open=true;});});"
                "</script>")
"""Opens every collapsed block before printing (CSS alone cannot), so a printout holds the
whole report."""


def table_html(df: pd.DataFrame, key: int = 1, links: dict | None = None) -> str:
    """A DataFrame as an HTML table: human headers (the TSV's column name as a tooltip), every
    cell formatted by :func:`msnet.formatting.format_value` (meaningful digits, p-values as
    ``< 0.001``), numbers right-aligned, free text wrapped, every row shown (no scroll box).

    ``key`` first columns identify a row; they stay left-aligned and do not wrap. ``links``
    maps a column to one relative URL per row (None: no link) that its cells link to.
    """
    if df is None or df.empty:
        return '<p class="note">(no rows)</p>'
    columns = list(df.columns)
    klass = ["key" if i < key else "txt" if c in TEXT_COLUMNS
             else "" if _numeric_like(df[c]) else "str" for i, c in enumerate(columns)]
    head = "".join(f'<th title="{html.escape(str(c))}"' + (f' class="{k}"' if k else "")
                   + f">{html.escape(column_label(c))}</th>" for c, k in zip(columns, klass))
    rows = []
    links = {c: list(v) for c, v in (links or {}).items()}
    for r, values in enumerate(df.itertuples(index=False, name=None)):
        rows.append("<tr>" + "".join(
            (f'<td class="{k}">' if k else "<td>")
            + _link(html.escape(format_value(c, v)), links[c][r] if c in links else None)
            + "</td>" for c, k, v in zip(columns, klass, values)) + "</tr>")
    return (f'<div class="tbl"><table class="tbl"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table></div>')


def _link(text: str, href) -> str:
    return text if not href else f'<a href="{html.escape(str(href))}">{text}</a>'


def _numeric_like(column: pd.Series) -> bool:
    """Whether a column holds numbers (right-aligned) rather than words."""
    if column.dtype == bool:
        return False
    values = column.dropna()
    values = values[~values.astype(str).isin(["n/a", ""])]
    return bool(len(values)) and bool(pd.to_numeric(values, errors="coerce").notna().all())


def _na(what: str) -> str:
    return f'<p class="na">{html.escape(what)}: {NA_TEXT}.</p>'


def _p(text: str, cls: str = "") -> str:
    klass = f' class="{cls}"' if cls else ""
    return f"<p{klass}>{html.escape(text)}</p>"


def _literature_metaregression(path) -> str:
    """The literature meta-regression table with how to read it."""
    reg = _read(path)
    if reg is None:
        return _na("Literature meta-regression table")
    return _p("Voxelwise mixed-effects meta-regression on each study-level moderator, at the "
              "voxel of largest |z|, with FWE p from permutations of the moderator across "
              "studies; q: Benjamini-Hochberg FDR of the FWE p over all rows (networks "
              "\u00d7 moderators \u00d7 methods), the multiplicity-corrected result to "
              "conclude from.", "note") + table_html(reg, key=3)


def _methods_html(text: str) -> str:
    """A methods text (paragraphs, then "References" and one reference per line) as HTML."""
    paras = text.split("\n\n")
    body = "".join(_p(p) for p in paras[:-1])
    refs = paras[-1].split("\n")[1:]
    return body + "<h3>References</h3><ol>" + "".join(
        f"<li>{html.escape(r)}</li>" for r in refs) + "</ol>"


def _details(summary: str, body: str) -> str:
    return f"<details><summary>{html.escape(summary)}</summary>{body}</details>"


def _figure(paths: dict, caption: str, html_dir=None) -> str:
    """A figure with its SVG embedded as a data URI, shown at its natural size (never
    enlarged, shrunk only to fit the window: its text then has the size
    :mod:`msnet.plotting` set), so the page needs no other file. The caption names the PNG
    and SVG files in ``figures/`` for papers."""
    svg = Path(paths["svg"]).read_bytes()
    width = svg_width_px(svg)
    data = base64.b64encode(svg).decode("ascii")
    names = " and ".join(Path(paths[k]).name for k in ("svg", "png") if paths.get(k))
    size = f' width="{width:.0f}"' if width else ""
    return (f'<figure><img alt="{html.escape(caption)}"{size} '
            f'src="data:image/svg+xml;base64,{data}">'
            f'<figcaption>{html.escape(caption)} <span class="note">(figures/: '
            f'{html.escape(names)})</span></figcaption></figure>')


def svg_width_px(svg: bytes) -> float | None:
    """Width of a matplotlib SVG in CSS pixels (its ``width="...pt"``; 1 pt = 4/3 px)."""
    match = re.search(rb'<svg[^>]*?\swidth="([0-9.]+)(pt|px)?"', svg[:4000])
    if not match:
        return None
    value = float(match.group(1))
    return value * 4 / 3 if match.group(2) == b"pt" else value


def _exists(path) -> bool:
    return bool(path) and Path(path).exists()


def _read(path) -> pd.DataFrame | None:
    """A TSV as a DataFrame (``n/a`` missing), or None when not given or absent."""
    if not _exists(path):
        if path:
            LOG.warning("report: %s not found; its section says '%s'", path, NA_TEXT)
        return None
    try:
        return pd.read_csv(path, sep="\t", na_values=["n/a"])
    except pd.errors.EmptyDataError:
        return pd.DataFrame()
    except (OSError, pd.errors.ParserError) as err:
        raise MsnetInputError(f"{path}: cannot read this result table for the report ({err}); "
                              "re-run the stage that writes it.") from err


_NULL_VARIABLES = ("disease_duration", "edss")
"""Clinical variables of the published null (subject level)."""
_NULL_MODERATORS = ("duration", "edss")
"""Meta-regression moderators of the published null (study means)."""


def _model_label(model) -> str:
    model = str(model)
    return ("joint model" if model == "joint"
            else "single-moderator model" if model.startswith("single") else model)


def _metareg_hits(rows: pd.DataFrame, pcol: str) -> str:
    """``metric ~ moderator (which model, beta, p, q)`` for meta-regression rows."""
    return "; ".join(
        f"{r.metric} ~ {_READABLE.get(r.moderator, r.moderator)} ({_model_label(r.model)}, "
        f"\u03b2 = {r.beta:.3g}, {'permutation p' if pcol == 'p_perm' else 'p'} = "
        f"{getattr(r, pcol):.3g}"
        + (f", q = {r.q_fdr:.3g}" if np.isfinite(getattr(r, "q_fdr", np.nan)) else "") + ")"
        for r in rows.itertuples())


def exclusions_by_rule(qc: pd.DataFrame) -> pd.DataFrame:
    """Number of excluded subjects per QC rule, from the exclusion reasons of a QC table.

    A reason names the option it exceeded (``max_mean_fd``, ``connectivity.max_vif``, ...;
    see :func:`msnet.qc.qc_decision`); a subject with several reasons counts under each.

    Returns
    -------
    pandas.DataFrame
        ``rule, excluded`` (subjects), rules with at least one exclusion, most frequent first.
    """
    if qc is None or qc.empty or "include" not in qc:
        return pd.DataFrame(columns=["rule", "excluded"])
    reasons = qc.loc[~qc["include"].astype(bool), "exclusion_reason"].fillna("").astype(str)
    counts = {}
    for reason in reasons:
        hit = {label for key, label in _RULES if key in reason} or {"other"}
        for label in hit:
            counts[label] = counts.get(label, 0) + 1
    table = pd.DataFrame(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])),
                         columns=["rule", "excluded"])
    return table


_RULES = (
    ("max_mean_fd", "mean FD (qc.max_mean_fd)"),
    ("max_pct_censored", "censored volumes (qc.max_pct_censored)"),
    ("min_minutes_kept", "data left (qc.min_minutes_kept)"),
    ("max_pct_flat_voxels", "flat voxels (qc.max_pct_flat_voxels)"),
    ("max_vif", "ill-conditioned dual regression, VIF (connectivity.max_vif)"),
    ("no signal", "no signal"),
)
"""(substring of an exclusion reason, rule label) for :func:`exclusions_by_rule`."""


def _within(table: pd.DataFrame) -> pd.DataFrame:
    """Within-network rows first, in network order, then the rest."""
    if table is None or table.empty or "metric" not in table:
        return table
    order = {f"within_{n}": i for i, n in enumerate(ANALYSIS_NETWORKS)}
    key = table["metric"].map(lambda s: order.get(s, len(order)))
    return table.assign(_k=key).sort_values("_k", kind="stable").drop(columns="_k")


def _forest_range(forest: pd.DataFrame | None, nets: pd.DataFrame) -> tuple | None:
    """One x range for every network's forest plot (studies' CIs, pooled CIs and prediction
    intervals of the within-network metrics, 5 % margin), so the plots compare at a glance."""
    metrics = [f"within_{n}" for n in ANALYSIS_NETWORKS]
    values = []
    for table, cols in ((forest, ("ci_low", "ci_high")),
                        (nets, ("ci_low", "ci_high", "pi_low", "pi_high"))):
        if table is None or "metric" not in table:
            continue
        rows = table[table["metric"].isin(metrics)]
        if "included" in rows:
            rows = rows[rows["included"].astype(str).str.lower().isin(["true", "1", "1.0"])]
        values += [pd.to_numeric(rows[c], errors="coerce") for c in cols if c in rows]
    if not values:
        return None
    allv = pd.concat(values)
    allv = allv[np.isfinite(allv)]
    if allv.empty:
        return None
    lo, hi = min(float(allv.min()), 0.0), max(float(allv.max()), 0.0)
    pad = 0.05 * (hi - lo or 1.0)
    return (lo - pad, hi + pad)


def _cols(table: pd.DataFrame, columns) -> pd.DataFrame:
    return table[[c for c in columns if c in table.columns]]


# --------------------------------------------------------------------------- sections


class _Report:
    """State shared by the section builders: inputs, options, figure folder, written files."""

    def __init__(self, config, inputs, figures_dir, html_dir):
        self.config = config or {}
        self.html_dir = Path(html_dir)
        self.inputs = inputs or {}
        self.figures_dir = Path(figures_dir)
        self.figures = []
        opts = _section_options(self.config)
        self.alpha_group = float(opts["group"]["alpha"])
        self.alpha_meta = float(opts["meta"]["alpha"])
        self.alpha_clin = float(opts["clinical"]["alpha"])
        self.qc_options = opts["qc"]
        self.radius = float((self.config.get("report") or {}).get("radius_mm", 12.0))
        self.meta = {k: _read(v) for k, v in
                     (self.inputs.get("meta_tables") or {}).items()}
        reg = self.meta.get("metaregression")
        if reg is not None and len(reg) and "q_fdr" not in reg and "moderator" in reg:
            from msnet.meta import metaregression_fdr  # a table written before q_fdr existed

            reg["q_fdr"] = metaregression_fdr(reg)
        self.clinical_table = _read(self.inputs.get("clinical_table"))
        self.simulated = (self.config.get("data") or {}).get("mode", "simulate") == "simulate"

    def stem(self, kind, net=None) -> Path:
        return self.figures_dir / FIGURES[kind].format(net=net)

    def figure(self, paths: dict, caption: str) -> str:
        self.figures += [paths["png"], paths["svg"]]
        return _figure(paths, caption, self.html_dir)

    # ---------------------------------------------------------------- dataset & QC
    def dataset_qc(self) -> str:
        from msnet.plotting import plot_qc_overview

        qc_files = [p for p in (self.inputs.get("qc") or []) if _exists(p)]
        parts = []
        if not qc_files:
            parts.append(_na("Subject QC tables"))
        else:
            from msnet.qc import read_study_qc

            qc = read_study_qc(qc_files)
            parts.append(self._qc_counts(qc))
            parts.append(self._motion(qc))
            parts.append(self.figure(
                plot_qc_overview(qc, self.stem("qc_overview"), self.qc_options),
                "QC overview. Left: mean framewise displacement by group; middle: percentage of "
                "censored volumes by group (dashed: QC limits; crosses: excluded subjects); "
                "right: included and excluded subjects per study."))
            excl = qc[~qc["include"]]
            pages = self._subject_pages(qc)
            parts.append("<h3>Excluded subjects</h3>")
            parts.append(table_html(_cols(excl, ["study_id", "participant_id", "group",
                                                 "mean_fd", "pct_censored", "minutes_kept",
                                                 "exclusion_reason"]), key=2,
                                    links={"participant_id": [pages[i] for i in excl.index]})
                         if len(excl) else _p("No subject failed QC."))
            parts.append(_details(f"Per-subject QC ({len(qc)} subjects)", table_html(_cols(qc, [
                "study_id", "participant_id", "group", "include", "mean_fd", "max_fd",
                "pct_censored", "minutes_kept", "n_volumes", "n_kept", "mean_dvars",
                "tsnr_median", "tr", "exclusion_reason"]), key=2,
                links={"participant_id": pages})))
            if any(pages):
                parts.append(_p(
                    "Each participant links to the subject's QC page (decision and reason, "
                    "FD and DVARS with the censored volumes, carpet plots before and after "
                    "denoising, the four network maps) in subjects/ beside this report; "
                    "the links work where the results folder is kept whole.", "note"))
        parts.append(self._excluded_inputs())
        return "".join(parts)

    def _subject_pages(self, qc: pd.DataFrame) -> list:
        """Per QC row, the relative link to the subject's QC page (:mod:`msnet.qcpage`), or
        None when pages are switched off (``qc.subject_pages``) or the page is missing."""
        from msnet.io.plan import subject_page

        if not (self.config.get("qc") or {}).get("subject_pages", True):
            return [None] * len(qc)
        links = []
        for study, pid in zip(qc["study_id"], qc["participant_id"]):
            link = subject_page(".", study, str(pid).removeprefix("sub-"))[2:]
            links.append(link if (self.html_dir / link).is_file() else None)
        return links

    def _qc_counts(self, qc: pd.DataFrame) -> str:
        rows = []
        for study, sub in qc.groupby("study_id", sort=True):
            inc = sub[sub["include"]]
            rows.append({"study_id": study, "subjects": len(sub), "included": len(inc),
                         "ms_included": int((inc["group"] == "MS").sum()),
                         "hc_included": int((inc["group"] == "HC").sum()),
                         "excluded": int((~sub["include"]).sum())})
        counts = pd.DataFrame(rows)
        total = counts.drop(columns="study_id").sum().to_dict()
        counts = pd.concat([counts, pd.DataFrame([{"study_id": "total", **total}])],
                           ignore_index=True)
        text = (f"{len(qc)} subjects in {qc['study_id'].nunique()} studies; "
                f"{int(qc['include'].sum())} included "
                f"({int(total['ms_included'])} MS, {int(total['hc_included'])} HC), "
                f"{int((~qc['include']).sum())} excluded by QC.")
        out = _p(text) + table_html(counts)
        rules = exclusions_by_rule(qc)
        if len(rules):
            out += ("<h3>Exclusions by rule</h3>" + _p(
                "Subjects excluded by each QC rule (a subject failing several rules counts "
                "under each).", "note") + table_html(rules))
        return out

    def _motion(self, qc: pd.DataFrame) -> str:
        from scipy import stats as sps

        inc = qc[qc["include"]]
        rows = []
        order = sorted(set(inc["group"]), key=lambda g: ({"MS": 0, "HC": 1}.get(g, 2), g))
        for group, sub in ((g, inc[inc["group"] == g]) for g in order):
            rows.append({"group": group, "n": len(sub), "mean_fd": sub["mean_fd"].mean(),
                         "sd_fd": sub["mean_fd"].std(), "pct_censored":
                         sub["pct_censored"].mean(), "minutes_kept": sub["minutes_kept"].mean(),
                         "tsnr_median": sub["tsnr_median"].mean()})
        text = "Motion of included subjects by group."
        ms, hc = (inc.loc[inc["group"] == grp, "mean_fd"].dropna() for grp in ("MS", "HC"))
        if len(ms) > 1 and len(hc) > 1:
            p = sps.ttest_ind(ms, hc, equal_var=False).pvalue
            text += (f" Mean FD MS vs HC: Welch t-test p {p_relation(p)} (mean FD is a covariate of "
                     "the group models).")
        return "<h3>Motion by group</h3>" + _p(text) + table_html(pd.DataFrame(rows))

    def _excluded_inputs(self) -> str:
        parts = []
        table = _read(self.inputs.get("excluded_inputs"))
        if table is not None:
            parts.append("<h3>Inputs excluded before processing</h3>")
            parts.append(table_html(table) if len(table)
                         else _p("No input was excluded (every participant had data)."))
        frames = [t for t in (_read(p) for p in _as_list(self.inputs.get("group_exclusions")))
                  if t is not None and len(t)]
        if frames:
            parts.append(_details("Exclusions recorded by the group and clinical stages",
                                  table_html(pd.concat(frames, ignore_index=True))))
        return "".join(parts)

    # ---------------------------------------------------------------- published findings
    def published(self, comparison: pd.DataFrame) -> str:
        parts = []
        for analysis, name in (("meta", "meta-analysis (z maps)"),
                               ("mega", "pooled mega-analysis (t maps)")):
            sub = comparison[comparison["analysis"] == analysis]
            avail = ~sub["note"].astype(str).str.endswith("map not available")
            if not avail.any():
                parts.append(_na(f"Voxelwise {name}"))
                continue
            parts.append(_p(f"{name}: {int(sub['found'].sum())} of {len(sub)} published "
                            "findings recovered."))
        parts.append(_p(
            "The reference meta-analysis (Journal of Neurology, \u2018"
            f"{REFERENCE_META_ANALYSIS}\u2019) reports regions, not peak coordinates. The "
            "column 'msnet coordinate' is not a published value: it is the representative MNI "
            "coordinate msnet chose for each published region (msnet.atlas.PUBLISHED_FINDINGS; "
            "bilateral precentral split into left and right), where the simulation plants its "
            "effects and the search below is centred. A finding is recovered when a local "
            "maximum with the published sign, significant at voxel-level FWE p < alpha, lies "
            f"within {self.radius:g} mm of that coordinate. Coordinates in MNI mm; labels from "
            "the Harvard-Oxford cortical atlas.", "note"))
        parts.append(_p(
            "Salience network (SN) results are the least precise: its nine small regions lie "
            "next to, and their templates overlap, the cingulo-opercular network's, so "
            "dual-regression stage 1 separates the two time courses poorly and the subjects' "
            "SN maps are noisier than the other networks' (on msnet's synthetic data, subject "
            "SN maps correlate with their generating maps at a median r of about 0.5, minimum "
            "about 0.3, against more than 0.5 for every subject in the DMN, SMN and VN). SN "
            "effects therefore have less power and wider intervals: a missed or non-significant "
            "SN finding is weaker evidence of no change than in the other networks, and SN "
            "peaks are located less precisely.", "note"))
        side = self._side_by_side(comparison)
        parts.append(side)
        notes = comparison[comparison["note"].astype(str) != ""]
        if len(notes):
            parts.append(_details("Near misses and notes", table_html(
                _cols(notes, ["analysis", "finding", "note"]))))
        return "".join(parts)

    @staticmethod
    def _side_by_side(comparison: pd.DataFrame) -> str:
        def cell(row, stat):
            if not row["found"]:
                return ('<span class="missed">\u2717</span>', "\u2013", "\u2013", "\u2013",
                        "\u2013")
            peak = f"({row['peak_x']:.0f}, {row['peak_y']:.0f}, {row['peak_z']:.0f})"
            return ('<span class="found">\u2713</span>', peak,
                    format_value("distance_mm", row["distance_mm"]),
                    html.escape(str(row["peak_label"])),
                    f"{stat} = {format_value('statistic', row['statistic'])}, p<sub>FWE</sub> "
                    f"{html.escape(p_relation(row['p_fwe']))}")

        head = ("<tr><th rowspan=2>Finding</th><th rowspan=2>Network</th><th rowspan=2>"
                "Direction</th><th rowspan=2>Published region</th><th rowspan=2>msnet "
                "coordinate (MNI; not published)</th><th colspan=5>Meta-analysis</th>"
                "<th colspan=5>Mega-analysis</th></tr>"
                "<tr>" + "<th>Found</th><th>Peak MNI</th><th>Distance (mm)</th><th>Label</th>"
                "<th>Statistic</th>" * 2 + "</tr>")
        body = []
        meta = comparison[comparison["analysis"] == "meta"].set_index("finding")
        mega = comparison[comparison["analysis"] == "mega"].set_index("finding")
        for finding in dict.fromkeys(comparison["finding"]):
            ref = (meta if finding in meta.index else mega).loc[finding]
            cells = [html.escape(str(finding)), html.escape(str(ref["network"])),
                     html.escape(str(ref["direction"])), html.escape(str(ref["published_label"])),
                     f"({ref['representative_x']:.0f}, {ref['representative_y']:.0f}, "
                     f"{ref['representative_z']:.0f})"]
            for table, stat in ((meta, "z"), (mega, "t")):
                cells += (list(cell(table.loc[finding], stat)) if finding in table.index
                          else ["\u2013"] * 5)
            body.append("<tr>" + "".join(
                f'<td class="{"key" if i == 0 else "wrap" if i in (3, 8, 9, 13, 14) else "str"}">'
                f"{c}</td>" for i, c in enumerate(cells)) + "</tr>")
        return (f'<div class="tbl"><table class="tbl"><thead>{head}</thead><tbody>'
                f'{"".join(body)}</tbody></table></div>')

    # ---------------------------------------------------------------- network meta
    def network_meta(self) -> str:
        from msnet.plotting import plot_forest, plot_funnel, plot_study_effects

        parts = [self._study_effects(plot_study_effects)]
        nets = self.meta.get("networks")
        if nets is None:
            return "".join(parts) + _na("Network-level meta-analysis tables")
        parts.append("<h3>Random-effects meta-analysis per metric</h3>")
        parts.append(_p("Hedges' g: pooled (MS \u2212 HC); PI: prediction interval; "
                        "\u03c4\u00b2, I\u00b2: heterogeneity; Q p: Cochran's Q test p.",
                        "note"))
        parts.append(table_html(_cols(_within(nets), [
            "metric", "model", "method", "k", "n_ms", "n_hc", "g", "ci_low", "ci_high", "p",
            "pi_low", "pi_high", "tau2", "i2", "q_p", "k_excluded", "warning"])))
        forest = self.meta.get("forest")
        egger = self.meta.get("egger")
        xlim = _forest_range(forest, nets)
        for net in ANALYSIS_NETWORKS:
            metric = f"within_{net}"
            row = nets[nets["metric"] == metric]
            if row.empty or forest is None:
                continue
            fdata = forest[forest["metric"] == metric]
            erow = (egger[egger["metric"] == metric].iloc[0]
                    if egger is not None and (egger["metric"] == metric).any() else None)
            title = f"{net}: within-network FC, MS vs HC"
            parts.append(f"<h3>{html.escape(net)}</h3><div class='row'>")
            parts.append(self.figure(
                plot_forest(fdata, row.iloc[0], self.stem("forest", net), title, xlim),
                f"Forest plot, {net} within-network connectivity: Hedges' g and 95% CI per "
                "study (square area \u221d random-effects weight), pooled estimate (diamond) "
                "and 95% prediction interval."))
            parts.append(self.figure(
                plot_funnel(fdata, row.iloc[0], erow, self.stem("funnel", net), title),
                f"Funnel plot, {net}: g against its standard error with the pseudo 95% CI "
                "funnel around the pooled g; Egger's test p in the title."))
            parts.append("</div>")
        if forest is None:
            parts.append(_na("Forest-plot data"))
        parts.append(self._loo())
        parts.append("<h3>Egger's test for small-study effects</h3>")
        parts.append(table_html(_cols(_within(egger), [
            "metric", "k", "bias", "bias_se", "t", "df", "p", "limit_estimate", "warning"]))
            if egger is not None else _na("Egger table"))
        return "".join(parts)

    def _study_effects(self, plot) -> str:
        paths = self.inputs.get("group_study_tables") or {}
        frames = [t.assign(study_id=str(s)) for s, t in
                  ((s, _read(p)) for s, p in paths.items()) if t is not None and len(t)]
        pooled = _read(self.inputs.get("pooled_table"))
        if pooled is not None and len(pooled):
            frames.append(pooled.assign(study_id="pooled"))
        if not frames:
            return "<h3>Per-study effects</h3>" + _na("Per-study group tables")
        table = pd.concat(frames, ignore_index=True)
        return "<h3>Per-study effects</h3>" + self.figure(
            plot(table, self.stem("study_effects")),
            "MS vs HC within-network connectivity per study: Hedges' g with 95% CI from the "
            "covariate-adjusted per-study models; the pooled mega-analysis (mixed model) at "
            "the bottom.")

    def _loo(self) -> str:
        loo, nets = self.meta.get("loo"), self.meta.get("networks")
        head = "<h3>Leave-one-study-out</h3>"
        if loo is None or nets is None or loo.empty:
            return head + _na("Leave-one-out table")
        rows = []
        for metric, sub in _within(loo).groupby("metric", sort=False):
            full = nets[nets["metric"] == metric]
            if full.empty:
                continue
            g_full, p_full = float(full["g"].iloc[0]), float(full["p"].iloc[0])
            shift = (sub["g"] - g_full).abs()
            sig = sub["p"] < self.alpha_meta
            rows.append({"metric": metric, "g": g_full, "p": p_full, "loo_g_min": sub["g"].min(),
                         "loo_g_max": sub["g"].max(), "loo_p_max": sub["p"].max(),
                         "most_influential_study": sub.loc[shift.idxmax(), "study_omitted"],
                         "significance_robust": bool((sig == (p_full < self.alpha_meta)).all())})
        return (head + _p("Range of the pooled g when each study is omitted in turn; "
                          "'significance robust': no omission changes significance at alpha "
                          f"= {self.alpha_meta:g}.", "note")
                + table_html(pd.DataFrame(rows))
                + _details("All leave-one-out fits", table_html(_within(loo))))

    # ---------------------------------------------------------------- meta-regression
    def meta_regression(self) -> str:
        from msnet.plotting import plot_bubble

        reg = self.meta.get("metaregression")
        if reg is None:
            return _na("Meta-regression table")
        slopes = reg[reg["moderator"].astype(str) != "intercept"] if len(reg) else reg
        parts = [self._metaregression_statement(slopes)]
        parts.append(_p("Model: single:<moderator> = one moderator at a time; joint = all "
                        "moderators together (each row is one coefficient of that model). "
                        "FDR q: Benjamini-Hochberg q of the permutation p (p without "
                        "permutations) across metrics × moderators, per model type and kind of "
                        "metric.", "note"))
        parts.append(table_html(_cols(_within(slopes), [
            "metric", "model", "moderator", "k", "beta", "se", "ci_low", "ci_high", "p",
            "p_perm", "q_fdr", "r2", "qm_p_perm", "warning"])))
        forest, mods = self.meta.get("forest"), self.meta.get("moderators")
        if forest is None or mods is None:
            return "".join(parts) + _na("Bubble plots (forest data or moderators table)")
        for net in ANALYSIS_NETWORKS:
            metric = f"within_{net}"
            if not (forest["metric"] == metric).any():
                continue
            parts.append(f"<h3>{html.escape(net)}</h3>")
            parts.append(self.figure(
                plot_bubble(forest[forest["metric"] == metric], mods,
                            reg[reg["metric"] == metric] if len(reg) else reg,
                            self.stem("bubble", net), f"{net}: meta-regression of g on study-level "
                            "moderators"),
                f"Meta-regression bubble plots, {net} within-network connectivity: study g "
                "against each study-level moderator (bubble area \u221d random-effects weight) "
                "with the fitted single-moderator line."))
        return "".join(parts)

    def _metaregression_statement(self, slopes: pd.DataFrame) -> str:
        """The published-null verdict (shared with the clinical section), the FDR-significant
        moderator effects, and the uncorrected hits for what they are."""
        if slopes is None or slopes.empty or "beta" not in slopes:
            return _p("No meta-regression could be estimated.") + self._verdict_html()
        fitted = slopes[pd.to_numeric(slopes["p"], errors="coerce").notna()]
        pcol = "p_perm" if "p_perm" in fitted and fitted["p_perm"].notna().any() else "p"
        praw = pd.to_numeric(fitted[pcol], errors="coerce")
        q = pd.to_numeric(fitted.get("q_fdr"), errors="coerce")
        hits = fitted[q < self.alpha_meta]
        other = hits[~hits["moderator"].astype(str).isin(_NULL_MODERATORS)]
        word = "permutation p" if pcol == "p_perm" else "p"
        parts = [self._verdict_html()]
        text = (f"{len(hits)} of {len(fitted)} moderator coefficients have FDR q < "
                f"{self.alpha_meta:g}"
                + (f"; other than disease duration and EDSS: {_metareg_hits(other, pcol)}."
                   if len(other) else "."))
        raw = fitted[praw < self.alpha_meta]
        if len(raw):
            text += (f" Uncorrected, {len(raw)} had {word} < {self.alpha_meta:g} (about "
                     f"{len(fitted) * self.alpha_meta:.0f} expected by chance alone); "
                     "uncorrected p-values are not evidence of an association.")
        parts.append(_p(text))
        if len(raw):
            parts.append(_details(f"Moderator coefficients with uncorrected {word} < "
                                  f"{self.alpha_meta:g}", _p(_metareg_hits(raw, pcol) + ".")))
        return "".join(parts)

    # ---------------------------------------------------------------- voxelwise
    def voxelwise(self) -> str:
        from msnet.plotting import plot_glass_brain

        pooled = self.inputs.get("pooled_maps") or {}
        meta = self.inputs.get("meta_maps") or {}
        parts = []
        for net in ANALYSIS_NETWORKS:
            parts.append(f"<h3>{html.escape(net)}</h3><div class='row'>")
            for kind, maps, stat, label, alpha in (
                    ("glass_brain_pooled", pooled, "t", "Pooled mega-analysis", self.alpha_group),
                    ("glass_brain_meta", meta, "z", "Voxelwise meta-analysis", self.alpha_meta)):
                entry = maps.get(net) or {}
                if not (_exists(entry.get(stat)) and _exists(_logp_path(entry))):
                    parts.append(_na(f"{label} maps for {net}"))
                    continue
                parts.append(self.figure(
                    plot_glass_brain(entry[stat], _logp_path(entry), self.stem(kind, net),
                                     f"{net} {label.lower()} ({stat})", alpha, net, stat),
                    f"{label}, {net}: MS vs HC {stat} map at voxel-level FWE p < {alpha:g} "
                    "(red: MS > HC, blue: MS < HC); triangles mark msnet's representative "
                    "coordinates of the published regions (up: published increase, down: "
                    "decrease)."))
            parts.append("</div>")
            parts.append(self._clusters(net))
        return "".join(parts)

    def _clusters(self, net) -> str:
        out = []
        for key, label in (("pooled_clusters", "Pooled mega-analysis clusters"),
                           ("meta_clusters", "Meta-analysis clusters")):
            table = _read((self.inputs.get(key) or {}).get(net))
            if table is None:
                out.append(_na(f"{label} ({net})"))
            else:
                out.append(f"<p><b>{html.escape(label)}</b> ({len(table)})</p>"
                           + table_html(table.drop(columns=["network"], errors="ignore")))
        return "".join(out)

    # ---------------------------------------------------------------- clinical
    def clinical(self) -> str:
        from msnet.plotting import plot_clinical_scatter

        table = self.clinical_table
        scatter = _read(self.inputs.get("clinical_scatter"))
        parts = []
        if table is None:
            parts.append(_na("Clinical association table"))
        else:
            parts.append(self._clinical_statement(table))
            parts.append(self.unconverged("clinical_table"))
            parts.append(table_html(_cols(_within(table), [
                "metric", "variable", "method", "n", "n_studies", "beta", "se", "ci_low",
                "ci_high", "std_beta", "p", "q_fdr", "status", "reason"])))
        if scatter is None:
            parts.append(_na("Partial-regression data"))
        else:
            parts.append(self.figure(
                plot_clinical_scatter(scatter, self.stem("clinical_scatter"), table),
                "Clinical associations within MS: partial-regression plots of within-network "
                "connectivity against each clinical variable (both residualised on the other "
                "model terms and study); line: residual least-squares slope; title: β and p "
                "of the pooled mixed model."))
        return "".join(parts)

    def _clinical_statement(self, table: pd.DataFrame) -> str:
        """The published-null verdict (shared with the meta-regression section) and the
        FDR-significant associations of the other clinical variables."""
        if table.empty or "q_fdr" not in table:
            return _p("No clinical model could be estimated.") + self._verdict_html()
        ok = table[table["status"] == "ok"] if "status" in table else table
        q = pd.to_numeric(ok["q_fdr"], errors="coerce")
        hits = ok[q < self.alpha_clin]
        other = hits[~hits["variable"].astype(str).isin(_NULL_VARIABLES)]
        text = (f"{len(hits)} of {int(q.notna().sum())} metric × variable models have FDR "
                f"q < {self.alpha_clin:g}"
                + ("; other than disease duration and EDSS: "
                   + "; ".join(f"{r.metric} ~ {_READABLE.get(r.variable, r.variable)} "
                               f"(β = {r.beta:.3g}, q = {r.q_fdr:.3g})"
                               for r in other.itertuples()) + "."
                   if len(other) else "."))
        return self._verdict_html() + _p(text)

    def _verdict_html(self) -> str:
        verdict = self.clinical_verdict()
        return _p(verdict, "verdict") if verdict else ""

    def clinical_verdict(self) -> str:
        """One conclusion on the published null for disease duration and EDSS, from the
        multiplicity-corrected results of both analyses that test it: the pooled clinical
        models within MS (FDR q) and the meta-regression on study means (FDR q of the
        permutation p). The clinical and meta-regression sections both print it, so they
        cannot disagree. Empty when neither result is available."""
        found, tested, n_tests = [], [], 0
        table = self.clinical_table
        if table is not None and len(table) and {"q_fdr", "variable"} <= set(table):
            ok = table[table["status"] == "ok"] if "status" in table else table
            ok = ok[ok["variable"].astype(str).isin(_NULL_VARIABLES)]
            q = pd.to_numeric(ok["q_fdr"], errors="coerce")
            n_tests += int(q.notna().sum())
            tested.append(f"{int(q.notna().sum())} pooled mixed models within MS at FDR q < "
                          f"{self.alpha_clin:g}")
            found += [f"within MS, {r.metric} ~ {_READABLE.get(r.variable, r.variable)} "
                      f"(β = {r.beta:.3g}, q = {r.q_fdr:.3g})"
                      for r in ok[q < self.alpha_clin].itertuples()]
        reg = self.meta.get("metaregression")
        if reg is not None and len(reg) and {"q_fdr", "moderator"} <= set(reg):
            rows = reg[reg["moderator"].astype(str).isin(_NULL_MODERATORS)]
            q = pd.to_numeric(rows["q_fdr"], errors="coerce")
            n_tests += int(q.notna().sum())
            tested.append(f"{int(q.notna().sum())} meta-regression coefficients on study "
                          f"means at FDR q < {self.alpha_meta:g}" if q.notna().any() else
                          "no meta-regression on study means could be fitted (see the "
                          "meta-regression table's warnings)")
            pcol = "p_perm" if "p_perm" in rows and rows["p_perm"].notna().any() else "p"
            found += [f"across studies, {_metareg_hits(rows[q < self.alpha_meta], pcol)}"] \
                if (q < self.alpha_meta).any() else []
        if not tested:
            return ""
        basis = f"Tested: {'; '.join(tested)}."
        if not n_tests:
            text = ("Published null for disease duration and EDSS: not assessed (no model of "
                    "disease duration or EDSS could be estimated). " + basis)
        elif found:
            text = ("Published null for disease duration and EDSS: NOT reproduced. "
                    f"Associations surviving multiplicity correction: {'; '.join(found)}. "
                    + basis)
        else:
            text = ("Published null for disease duration and EDSS: reproduced. No association "
                    "with disease duration or EDSS survived multiplicity correction. " + basis)
        if self.simulated:
            text += f" The synthetic data planted {_clinical_truth(self.config)}."
        return text

    # ---------------------------------------------------------------- meta vs mega
    def unconverged(self, key: str = "pooled_table") -> str:
        """A warning naming every pooled mixed model of a table (``pooled_table``: MS vs HC,
        ``clinical_table``) whose REML fit converged with no optimiser, or ''."""
        table = _read(self.inputs.get(key))
        if table is None or "converged" not in table:
            return ""
        ok = table["status"].astype(str).eq("ok") if "status" in table else True
        bad = table[ok & table["converged"].astype(str).str.lower().eq("false")]
        if bad.empty:
            return ""
        fits = [str(r.metric) + (f" ({r.variable})" if "variable" in bad else "")
                for r in bad.itertuples()]
        return _p("Warning: the pooled mixed model did not converge (statsmodels' default "
                  "optimisers, Powell then L-BFGS, and Nelder-Mead then L-BFGS all failed) for "
                  f"{', '.join(fits)}; those estimates are the highest-likelihood ones found "
                  "and are not reliable (see the table's note column).", "missed")

    def literature(self) -> str:
        """Coordinate-based and hybrid meta-analysis (:mod:`msnet.literature`): each method
        next to the image-based meta-analysis of the same studies."""
        from msnet.literature import METHOD_LABELS

        files = self.inputs.get("literature") or {}
        summary, recovery = (_read(files.get(k)) for k in ("comparison", "recovery"))
        if summary is None or recovery is None:
            return _na("Coordinate-based and hybrid meta-analysis (literature mode did not "
                       "run beside image studies)")
        order = [m for m in METHOD_LABELS if m in set(summary["method"])]
        totals = summary.groupby("method", sort=False).agg(
            recovered=("recovered", "sum"), n_findings=("n_findings", "sum"),
            significant_voxels=("significant_voxels", "sum"),
            dice_ibma=("dice_ibma", "mean"), significant_peaks=("significant_peaks", "sum"),
            false_positive_peaks=("false_positive_peaks", "sum")).reindex(order)
        if summary["false_positive_peaks"].isna().all():
            totals["false_positive_peaks"] = np.nan
        totals.insert(0, "method_name", [METHOD_LABELS[m] for m in totals.index])
        text = ("The same studies analysed five ways: the image-based meta-analysis of their g "
                "maps (ibma), ALE and MKDA (NiMARE) and msnet's SDM-style estimator on their "
                "published peaks only, and the hybrid with half of them as images. "
                + "; ".join(f"{METHOD_LABELS[m]}: {int(r.recovered)} of {int(r.n_findings)} "
                            "published locations" for m, r in totals.iterrows()) + ".")
        parts = [_p(text), _p(
            "Recovered: an FWE-significant local maximum of the published sign within "
            f"{self.radius:g} mm. Dice: overlap of the FWE-significant voxels (same sign) with "
            "the image-based result, mean over networks (empty where neither has any). False "
            "positives: significant peaks farther than the search radius from every planted "
            "location of their sign (simulated data only). ALE and MKDA test the convergence "
            "of peak locations, not an effect size, and need at least two studies with peaks "
            "of a direction.", "note"),
            table_html(totals.reset_index()), "<h3>Published locations by method</h3>",
            table_html(self._recovery_by_method(recovery, order), key=3),
            _details("Per network", table_html(summary, key=2))]
        parts.append("<h3>Meta-regression of the SDM-style and hybrid maps</h3>")
        parts.append(_literature_metaregression(files.get("metaregression")))
        return "".join(parts)

    @staticmethod
    def _recovery_by_method(recovery: pd.DataFrame, order) -> pd.DataFrame:
        """One row per published finding, one column per method: found (distance, z) or not."""
        def cell(row):
            if not bool(row["found"]):
                return "\u2717"
            return (f"\u2713 {row['distance_mm']:.1f} mm, z "
                    f"{format_value('statistic', row['statistic'])}")

        recovery = recovery.assign(cell=recovery.apply(cell, axis=1))
        wide = recovery.pivot_table(index=["finding", "network", "direction"], columns="method",
                                    values="cell", aggfunc="first", sort=False)
        return wide.reindex(columns=order).reset_index()

    def meta_vs_mega(self) -> str:
        flag = self.unconverged("pooled_table")
        table = _read(self.inputs.get("meta_vs_mega"))
        if table is None:
            return flag + _na("Meta vs mega table")
        agree = table["same_direction"].astype(str).str.lower().eq("true").sum() \
            if "same_direction" in table else 0
        text = (f"Two-stage random-effects meta-analysis (meta_*) next to the one-stage "
                f"pooled mixed model (mega_*); same direction for {int(agree)} of "
                f"{len(table)} metrics.")
        if "combat_g" in table:
            text += (" ComBat-mega (combat_*): the same pooled model on ComBat-harmonised "
                     "data (group.harmonize: combat); combat_difference = ComBat-mega − "
                     "mega.")
        return flag + _p(text) + table_html(_within(table)) + self.combat()

    def combat(self) -> str:
        """ComBat (``group.harmonize: combat``): published findings recovered by the pooled
        model with and without harmonisation, and the empirical-Bayes shrinkage per site."""
        maps = self.inputs.get("combat_maps")
        if not maps and not self.inputs.get("combat_shrinkage"):
            return ""
        out = "<h3>ComBat harmonisation</h3>"
        if maps:
            found = {}
            for name, pooled in (("mega", self.inputs.get("pooled_maps") or {}),
                                 ("ComBat-mega", maps)):
                try:
                    found[name] = sum(int(compare_with_published(
                        pooled[n]["t"], pooled[n]["logpfwe"], n, self.alpha_group,
                        self.radius)["found"].sum()) for n in pooled)
                except (MsnetInputError, OSError, KeyError):
                    found[name] = None
            from msnet.atlas import published_findings

            n_find = len(published_findings())
            out += _p("Published locations recovered (FWE-significant peak of the published "
                      "sign within the search radius): "
                      + "; ".join(f"{k} {'n/a' if v is None else v} of {n_find}"
                                  for k, v in found.items()) + ".")
        shrink = _read(self.inputs.get("combat_shrinkage"))
        if shrink is None:
            return out + _na("ComBat shrinkage table")
        return out + _p("Empirical-Bayes shrinkage per site and harmonised scope "
                        "(additive_shrinkage: the prior's median weight in the posterior "
                        "site mean, 0 = none, 1 = all features set to the site's mean; "
                        "multiplicative_shrinkage: the same for the site variance).") \
            + table_html(shrink)

    # ---------------------------------------------------------------- edges (NBS)
    def edges(self) -> str:
        """Edge-level differences (:mod:`msnet.nbs`): what the pooled models found, the two
        figures, the pooled components and network pairs, and every model's row."""
        paths = self.inputs.get("nbs")
        if not paths:
            return _p("The edge-level analysis was not run (nbs.enabled: false).")
        from msnet.nbs import NBS_DEFAULTS, nbs_verdict

        opts = {**NBS_DEFAULTS, **(self.config.get("nbs") or {})}
        alpha = float(opts["alpha"])
        analyses = _read(paths["analyses"])
        if analyses is None:
            return _na("NBS analyses table")
        comps = _read(paths["components"])
        pairs = _read(paths["networkpairs"])
        edges = _read(paths["edges"])
        parts = [_p(nbs_verdict(analyses, comps, edges, opts,
                                self.config.get("simulate") if self.simulated else None))]
        figs = paths.get("figures") or {}
        for kind, caption in (
                ("matrix", "Pooled NBS: edge t of each contrast, the 300 ROIs ordered by "
                           "network (below the diagonal every edge, above it only the edges "
                           f"of components with FWE p < {alpha:g}; red: positive t, i.e. "
                           "MS > HC or rising with the clinical variable; blue: negative)."),
                ("connectome", "Pooled NBS: the significant components on a glass brain "
                               "(edges coloured by t, nodes by network).")):
            entry = figs.get(kind) or {}
            if _exists(entry.get("svg")):
                parts.append(self.figure(entry, caption))
            else:
                parts.append(_na(f"NBS {kind} figure"))
        if comps is not None:
            pooled = comps[comps["study_id"].astype(str) == "pooled"]
            shown = pooled[(pooled["significant"].astype(str).str.lower() == "true")
                           | (pooled["n_edges"] >= 3)]
            parts.append("<h3>Pooled components</h3>"
                         + _p(f"Components of at least 3 edges or with FWE p < {alpha:g} "
                              f"({len(shown)} of {len(pooled)}; the rest in "
                              f"{Path(paths['components']).name}).", "note")
                         + table_html(_cols(shown, ["contrast", "component", "direction",
                                                    "n_edges", "n_nodes", "networks",
                                                    "intensity", "p_fwe", "significant"]),
                                      key=2))
        if pairs is not None:
            sig = pairs[(pairs["study_id"].astype(str) == "pooled") & (pairs["n_significant"] > 0)]
            parts.append("<h3>Network pairs with significant edges (pooled)</h3>"
                         + table_html(_cols(sig, ["contrast", "network_a", "network_b",
                                                  "n_edges", "n_significant",
                                                  "n_significant_positive",
                                                  "n_significant_negative",
                                                  "mean_t_significant", "mean_t"]), key=3))
        parts.append(_details(f"Every NBS model ({len(analyses)})", table_html(_cols(
            analyses, ["study_id", "contrast", "n", "n_ms", "n_hc", "df", "covariates",
                       "n_edges", "n_supra_positive", "n_supra_negative", "n_components",
                       "max_size", "min_p_fwe", "n_significant", "status", "reason"]), key=2)))
        return "".join(parts)

    # ---------------------------------------------------------------- motion (QC-FC)
    def qcfc(self) -> str:
        """Motion (QC-FC) (:mod:`msnet.qcfc`): the main strategy and whether its QC-FC is
        acceptable, the benchmarks per strategy with their figure, and MS vs HC mean FD.
        Both figures are always written (saying "no data" without QC-FC results), as the
        workflow declares them."""
        from msnet.qcfc import DEFAULT_OPTIONS, plot_fd_by_group, plot_qcfc_benchmarks, verdict

        paths = self.inputs.get("qcfc") or {}
        opts = {**DEFAULT_OPTIONS, **(self.config.get("qcfc") or {})}
        stats, edges, subjects, fd = (_read(paths.get(k)) for k in
                                      ("strategies", "edges", "subjects", "fdgroup"))
        parts = []
        if not paths and not opts["enabled"]:
            parts.append(_p("QC-FC was not computed (qcfc.enabled: false)."))
        elif stats is None:
            parts.append(_na("QC-FC tables"))
        else:
            parts.append(_p(verdict(stats, opts), "verdict"))
            alpha = float(opts["alpha"])
            parts.append(_p(
                "QC-FC: for every edge of the 300-ROI matrix, the partial correlation of its "
                "Fisher z with mean framewise displacement across the included subjects, "
                f"controlling for {_names([c for c in opts['covariates']]) or 'nothing'} and "
                "study (one indicator per study), as in "
                f"{REFERENCES['ciric2017'].cite} and {REFERENCES['parkes2018'].cite}. "
                f"Edges p < \u03b1 / FDR q < \u03b1: % of edges with a significant QC-FC at "
                f"\u03b1 = {alpha:g} (uncorrected: {100 * alpha:g}% expected by chance; "
                "Benjamini-Hochberg FDR: about 0% by chance). Null median |QC-FC|: what no "
                "motion effect at all gives at these degrees of freedom. Distance \u03c1: "
                "Spearman correlation of the QC-FC with the distance between the ROI "
                "centres (negative: motion inflates short-distance FC most). tDOF lost: "
                "confound regressors + censored volumes per subject (the band-pass filter, the "
                "same for every strategy, is not counted).", "note"))
            parts.append(table_html(_cols(stats, [
                "strategy", "main", "options", "n", "n_edges", "pct_sig_uncorrected",
                "pct_sig_fdr", "median_abs_r", "null_median_abs_r", "distance_rho",
                "tdof_loss_mean", "tdof_loss_sd", "pct_tdof_loss_mean", "n_unusable",
                "acceptable"])))
        if stats is None or edges is None:
            return "".join(parts)
        parts.append(self.figure(
            plot_qcfc_benchmarks(stats, edges, subjects, self.stem("qcfc_benchmarks"),
                                 opts["max_pct_fdr"]),
            "QC-FC per denoising strategy. Left: distribution of the edges' QC-FC (partial "
            "correlation of edge FC with mean FD), with the % of FDR-significant edges and the "
            "median |QC-FC|; middle: distance dependence, the mean QC-FC of the edges in each "
            "decile of ROI distance; right: temporal degrees of freedom lost per subject."))
        parts.append("<h3>Head motion, MS vs HC</h3>")
        if fd is not None and len(fd):
            rows = {r.test: r for r in fd.itertuples()}
            welch = rows.get("Welch t")
            text = ""
            if welch is not None:
                text = (f"Mean FD of the included subjects: MS {welch.fd_mean_ms:.3f} mm "
                        f"(n = {int(welch.n_ms)}), HC {welch.fd_mean_hc:.3f} mm "
                        f"(n = {int(welch.n_hc)}); "
                        + "; ".join(f"{name} p {p_relation(r.p)}" for name, r in rows.items())
                        + ". Welch's t test and the Mann-Whitney U test compare the pooled "
                        "subjects; the OLS of mean FD on group with one indicator per study "
                        "compares MS and HC within studies, as the pooled group models do. "
                        "The group models adjust for mean FD where group.covariates include "
                        "it; QC-FC above says how much motion is left in the FC itself.")
            parts.append(_p(text) + table_html(fd, key=1))
        elif paths:
            parts.append(_na("MS vs HC mean FD tests"))
        parts.append(self.figure(
            plot_fd_by_group(subjects, fd, self.stem("qcfc_fd")),
            "Mean framewise displacement of the subjects the analysis includes, by group: all "
            "studies (with the MS-vs-HC tests) and per study."))
        if subjects is not None and "usable" in subjects:
            bad = subjects[~subjects["usable"].astype(str).str.lower().isin(["true", "1"])]
            if len(bad):
                parts.append(_details(f"Subjects a strategy could not clean ({len(bad)})",
                                      table_html(_cols(bad, ["strategy", "study_id",
                                                             "participant_id", "reason"]),
                                                 key=3)))
        return "".join(parts)

    # ---------------------------------------------------------------- methods
    def methods(self) -> str:
        return _methods_html(self.methods_text())

    def methods_text(self) -> str:
        """:func:`methods_text` of the options the stages recorded (:meth:`used_config`) and
        the covariates their models had."""
        if not hasattr(self, "_methods"):
            self._methods = methods_text(self.used_config(),
                                         covariates_used=self._covariates_used(),
                                         space=space_of(self.inputs.get("meta_maps") or {}))
        return self._methods

    def used_config(self) -> dict:
        """The config with each stage's options replaced by those its outputs record: the
        subject QC file's ``denoise``, ``connectivity`` and ``qc_thresholds`` (what the
        subject stage ran), and the meta-analysis table's estimator (``method`` of its
        random-effects rows) and test (``test``: ``knha`` = Knapp-Hartung)."""
        config = dict(self.config)
        record = self._subject_record()
        for section, key in (("denoise", "denoise"), ("connectivity", "connectivity"),
                             ("qc", "qc_thresholds")):
            if isinstance(record.get(key), dict):
                config[section] = {**(config.get(section) or {}), **record[key]}
        nets = self.meta.get("networks")
        if nets is not None and len(nets) and {"model", "method", "test"} <= set(nets):
            random = nets[nets["model"].astype(str) == "random"]
            methods = set(random["method"].dropna().astype(str))
            tests = set(random["test"].dropna().astype(str))
            meta = dict(config.get("meta") or {})
            if len(methods) == 1:
                meta["method"] = methods.pop()
            if len(tests) == 1:
                meta["knapp_hartung"] = tests.pop() == "knha"
            config["meta"] = meta
        kinds = set()
        for path in (self.inputs.get("group_study_tables") or {}).values():
            table = _read(path)
            if table is not None and "effect_size" in table:
                kinds |= set(table["effect_size"].dropna().astype(str))
        if len(kinds) == 1:
            config["group"] = {**(config.get("group") or {}), "effect_size": kinds.pop()}
        return config

    def _covariates_used(self) -> dict:
        """Covariates of the fitted group and clinical models, from their result tables."""
        o = _section_options(self.config)
        group = [_read(p) for p in (self.inputs.get("group_study_tables") or {}).values()]
        group.append(_read(self.inputs.get("pooled_table")))
        clinical = [_read(self.inputs.get("clinical_table"))]
        out = {}
        for key, tables in (("group", group), ("clinical", clinical)):
            if any(t is not None and "covariates" in t for t in tables):
                out[key] = covariates_in_models(tables, o[key]["covariates"])
        return out

    def _subject_record(self) -> dict:
        """One subject's QC file (the options the subject stage recorded), or {}."""
        path = self.inputs.get("subject_qc")
        if not path or not _exists(path):
            return {}
        record = json.loads(Path(path).read_text())
        return record if isinstance(record, dict) else {}


def _as_list(value) -> list:
    if not value:
        return []
    return [value] if isinstance(value, (str, Path)) else list(value)


IMAGE_SUBTITLE = ("MS vs healthy controls across studies: mega-analysis, random-effects "
                  "meta-analysis and clinical associations.")
LITERATURE_SUBTITLE = ("MS vs healthy controls across published studies: meta-analysis of "
                       "their reported peak coordinates (literature mode).")


def _page(sections: list, titles=SECTIONS, subtitle: str = IMAGE_SUBTITLE) -> str:
    """The whole HTML page: navigation, then one ``<section>`` per (id, title) of
    ``titles`` with the matching entry of ``sections``."""
    nav = "".join(f'<a href="#{sid}">{html.escape(title)}</a>' for sid, title in titles)
    body = "".join(f'<section><h2 id="{sid}">{html.escape(title)}</h2>{content}</section>'
                   for (sid, title), content in zip(titles, sections, strict=True))
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>msnet report</title><style>{CSS}</style>{PRINT_SCRIPT}</head><body>"
            f"<nav>{nav}</nav><main><h1>msnet: resting-state networks in multiple sclerosis"
            f"</h1><p class=\"note\">{html.escape(subtitle)} msnet {__version__}."
            f"</p>{body}</main></body></html>\n")


def build_report(config: dict, inputs: dict, out_html, figures_dir,
                 comparison_tsv=None, citations=None) -> dict:
    """Build ``report.html``, every figure, the published-findings comparison table and the
    BibTeX file of the works the methods text cites.

    Parameters
    ----------
    config : dict
        The validated workflow configuration (alpha levels, QC limits and the methods text
        come from it; optional ``report.radius_mm``, default 12, is the search radius of
        :func:`compare_with_published`).
    inputs : dict
        Result files; every key is optional (a missing key, None or a file that does not
        exist gives "not available" in its section):

        ``qc`` : list of path
            Each study's subject QC table (:func:`msnet.qc.summarise_study_qc`).
        ``subject_qc`` : path
            One subject's ``sub-*_qc.json`` (the denoising options it recorded).
        ``excluded_inputs`` : path
            ``excluded_inputs.tsv`` (``study_id, participant_id, reason``).
        ``group_exclusions`` : path or list of path
            ``pooled_desc-exclusions.tsv`` / per-study ``*_desc-exclusions.tsv`` /
            ``pooled_desc-clinicalexclusions.tsv``.
        ``group_study_tables`` : dict study -> path
            ``study-{id}_desc-MSvsHC_networks.tsv``.
        ``pooled_table`` : path
            ``pooled_desc-MSvsHC_networks.tsv``.
        ``pooled_maps`` : dict network -> {"t": path, "logpfwe": path}
            ``pooled_network-{net}_space-{space}_stat-{t,logpfwe}_map.nii.gz``.
        ``pooled_clusters`` : dict network -> path
            ``pooled_network-{net}_clusters.tsv``.
        ``clinical_table`` : path
            ``pooled_desc-clinical_networks.tsv``.
        ``clinical_scatter`` : path
            ``pooled_desc-partialregression_scatter.tsv``.
        ``meta_tables`` : dict name -> path
            What :func:`msnet.meta.meta_networks` returns: ``networks``, ``loo``, ``egger``,
            ``metaregression``, ``moderators``, ``forest``.
        ``meta_maps`` : dict network -> {"z": path, "logpfwe": path}
            ``meta_network-{net}_space-{space}_stat-{z,logpfwe}_map.nii.gz``.
        ``meta_clusters`` : dict network -> path
            ``meta_network-{net}_clusters.tsv``.
        ``meta_vs_mega`` : path
            ``meta_desc-metavsmega_stats.tsv``.
        ``qcfc`` : dict
            The QC-FC tables (:func:`msnet.qcfc.output_paths`: ``strategies``, ``edges``,
            ``subjects``, ``fdgroup``); the section "Motion (QC-FC)".

        (``logp_fwe`` and ``logpfwe`` are accepted in both map dicts.)
    out_html : path
        ``results/report.html``.
    figures_dir : path
        ``results/figures``; figure names are :data:`FIGURES` (+ ``.png``/``.svg``).
    comparison_tsv : path, optional
        Default ``report_desc-published_comparison.tsv`` beside ``out_html``.
    citations : path, optional
        Default ``citations.bib`` beside ``out_html``: a BibTeX entry (with its DOI where
        one exists) for every work the methods text cites (:func:`citations_bib`).

    Returns
    -------
    dict
        ``html``, ``comparison``, ``citations`` (paths) and ``figures`` (list of written
        figure paths).
    """
    out_html = Path(out_html)
    comparison_tsv = Path(comparison_tsv or out_html.with_name(
        "report_desc-published_comparison.tsv"))
    rep = _Report(config, inputs, figures_dir, out_html.parent)
    comparison = published_comparison(rep.inputs.get("meta_maps"), rep.inputs.get("pooled_maps"),
                                      rep.alpha_meta, rep.alpha_group, rep.radius)
    write_table(comparison, comparison_tsv)
    sections = [rep.dataset_qc(), rep.published(comparison), rep.network_meta(),
                rep.meta_regression(), rep.voxelwise(), rep.clinical(), rep.meta_vs_mega(),
                rep.literature(), rep.edges(), rep.qcfc(), rep.methods()]
    citations = Path(citations or out_html.with_name("citations.bib"))
    write_text(citations_bib(rep.methods_text()), citations)
    write_text(_page(sections), out_html)
    LOG.info("wrote %s with %d figures", out_html, len(rep.figures) // 2)
    return {"html": str(out_html), "comparison": str(comparison_tsv),
            "citations": str(citations), "figures": rep.figures}


LITERATURE_SECTIONS = (
    ("literature-studies", "Studies and peaks"),
    ("literature", "Coordinate-based meta-analysis"),
    ("literature-metaregression", "Meta-regression"),
    ("methods", "Methods"),
)
"""(id, title) of the literature-only report's sections (:func:`build_literature_report`)."""

LITERATURE_FIGURE = "literature_network-{net}_method-sdm_desc-glassbrain"
"""File stem of the literature-only report's glass brain of a network's SDM-style z map."""


def literature_figure_paths(figures_dir, networks=ANALYSIS_NETWORKS, ext="png") -> list:
    """Every figure :func:`build_literature_report` writes (for Snakemake)."""
    return [str(Path(figures_dir) / f"{LITERATURE_FIGURE.format(net=n)}.{ext}")
            for n in networks]


def build_literature_report(config: dict, peaks_tsv, studies_tsv, outputs: dict, out_html,
                            figures_dir, citations=None) -> dict:
    """Build ``report.html`` of literature mode without image studies (the published peaks
    only): the studies and their peaks, per network each method's FWE-significant clusters
    with a glass brain of the SDM-style z map, the meta-regressions and the methods text
    (with its references, also written as BibTeX).

    Parameters
    ----------
    config : dict
        The validated configuration (``meta.alpha``, ``data.mode``).
    peaks_tsv, studies_tsv : str or Path
        The peaks and literature studies tables the analysis read.
    outputs : dict
        What :func:`msnet.literature.literature_meta` wrote
        (:func:`msnet.literature.literature_outputs`).
    out_html, figures_dir : path
        ``results/report.html`` and ``results/figures``.
    citations : path, optional
        Default ``citations.bib`` beside ``out_html``.

    Returns
    -------
    dict
        ``html``, ``citations`` (paths) and ``figures`` (written figure paths).
    """
    from msnet.literature import read_literature_studies, read_peaks

    out_html = Path(out_html)
    alpha = float(_section_options(config)["meta"]["alpha"])
    studies = read_literature_studies(studies_tsv)
    peaks = read_peaks(peaks_tsv, studies, studies_tsv)
    methods = Path(outputs["methods"]).read_text()
    figures = []
    sections = [_literature_studies(studies, peaks),
                _literature_networks(outputs, peaks, alpha, Path(figures_dir), out_html.parent,
                                     figures),
                _literature_metaregression(outputs["metaregression"]),
                _methods_html(methods)]
    citations = Path(citations or out_html.with_name("citations.bib"))
    write_text(citations_bib(methods), citations)
    write_text(_page(sections, LITERATURE_SECTIONS, LITERATURE_SUBTITLE), out_html)
    LOG.info("wrote %s with %d figures", out_html, len(figures) // 2)
    return {"html": str(out_html), "citations": str(citations), "figures": figures}


def _literature_studies(studies: pd.DataFrame, peaks: pd.DataFrame) -> str:
    """The studies table with each study's number of peaks per network and direction."""
    from msnet.meta import MODERATORS

    counts = peaks.groupby(["study_id", "network", "direction"]).size().unstack(
        ["network", "direction"], fill_value=0)
    counts.columns = [f"{net} {direction}" for net, direction in counts.columns]
    order = [f"{n} {d}" for n in ANALYSIS_NETWORKS for d in ("MS>HC", "MS<HC")]
    counts = counts.reindex(columns=[c for c in order if c in counts.columns])
    moderators = [m for m in MODERATORS if m in studies and studies[m].notna().any()]
    table = studies[["study_id", "n_ms", "n_hc", "threshold_p", "coverage", *moderators]]
    table = table.join(counts).fillna({c: 0 for c in counts.columns})
    text = (f"{len(studies)} studies ({int(studies['n_ms'].sum())} people with MS, "
            f"{int(studies['n_hc'].sum())} controls) reported {len(peaks)} peaks. Peak "
            "counts per network and direction of the contrast; a study reporting no peak in a "
            "network it analysed enters that network's SDM-style analysis with a null map.")
    return _p(text) + table_html(table.reset_index(drop=True))


def _literature_networks(outputs: dict, peaks: pd.DataFrame, alpha: float, figures_dir: Path,
                         html_dir: Path, figures: list) -> str:
    """Per network: a glass brain of the SDM-style z map, a summary row per method and the
    significant clusters of each."""
    from msnet.literature import METHOD_LABELS
    from msnet.plotting import plot_glass_brain

    parts = [_p(f"Significant clusters per network (FWE p < {alpha:g}). ALE and MKDA (NiMARE) "
                "test the convergence of the peak locations of each direction: clusters of the "
                "voxels with Monte-Carlo voxel-level FWE p < "
                f"{alpha:g}. The SDM-style estimator pools recreated effect-size maps: clusters "
                "at its primary threshold that are significant by sign-flip cluster-extent FWE "
                "or hold a voxel of voxel-level FWE p < "
                f"{alpha:g} (the glass brain shows those voxels). Peak z is positive for MS > "
                "HC.", "note")]
    for net, labels in outputs["clusters"].items():
        parts.append(f"<h3>{html.escape(net)}</h3>")
        sdm = outputs["maps"][net]["sdm"]
        paths = plot_glass_brain(sdm["z"], sdm["logpfwe"],
                                 figures_dir / LITERATURE_FIGURE.format(net=net),
                                 f"{net} SDM-style meta-analysis (z)", alpha, net, "z",
                                 markers=False)
        figures += [paths["png"], paths["svg"]]
        n_peaks = int((peaks["network"] == net).sum())
        parts.append(_figure(paths, f"{net}: SDM-style random-effects meta-analysis of "
                                    f"{n_peaks} published peaks, z at voxel-level FWE p < "
                                    f"{alpha:g} (red: MS > HC, blue: MS < HC).", html_dir))
        rows, details = [], []
        for label, path in labels.items():
            method, _, direction = label.partition("_")
            name = METHOD_LABELS[method] + {"inc": ", MS>HC", "dec": ", MS<HC"}.get(direction, "")
            table = _read(path)
            sig = None if table is None else table[_significant_clusters(table, alpha)]
            rows.append(_literature_summary_row(name, sig))
            if sig is not None and len(sig):
                details.append(_details(f"{name}: {len(sig)} clusters",
                                        table_html(sig.drop(columns=["network"],
                                                            errors="ignore"))))
        parts.append(table_html(pd.DataFrame(rows)) + "".join(details))
    return "".join(parts)


def _significant_clusters(table: pd.DataFrame, alpha: float) -> pd.Series:
    """Clusters significant by cluster-level FWE (``significant``) or holding a voxel of
    voxel-level FWE p < ``alpha`` (``peak_p_fwe``)."""
    flag = table["significant"].astype(str).str.lower().isin(("true", "1", "yes"))
    return flag | (pd.to_numeric(table["peak_p_fwe"], errors="coerce") < alpha)


def _literature_summary_row(method: str, sig: pd.DataFrame | None) -> dict:
    """Clusters, volume and strongest peak (coordinate, z, label) of one method's map."""
    row = {"method": method, "clusters": np.nan, "size_mm3": np.nan, "peak_x": np.nan,
           "peak_y": np.nan, "peak_z": np.nan, "peak_zstat": np.nan, "label": ""}
    if sig is None:
        return {**row, "label": NA_TEXT}
    row.update(clusters=len(sig), size_mm3=float(sig["size_mm3"].sum()) if len(sig) else 0.0)
    if len(sig):
        top = sig.loc[sig["peak_zstat"].abs().idxmax()]
        row.update({k: top[k] for k in ("peak_x", "peak_y", "peak_z", "peak_zstat", "label")})
    return row


def figure_paths(figures_dir, networks=ANALYSIS_NETWORKS, ext="png", qcfc: bool = False) -> dict:
    """Every figure :func:`build_report` writes when all inputs are present (for Snakemake).

    ``qcfc``: QC-FC ran (``qcfc.enabled``), so its figures are written too (otherwise their
    kinds map to no path).

    Returns
    -------
    dict
        Figure kind (:data:`FIGURES`) -> list of paths with extension ``ext``.
    """
    out = {}
    for kind, stem in FIGURES.items():
        names = ([stem.format(net=n) for n in networks] if "{net}" in stem else [stem])
        if kind.startswith("qcfc_") and not qcfc:
            names = []
        out[kind] = [str(Path(figures_dir) / f"{name}.{ext}") for name in names]
    return out


def report_inputs(results_dir, studies, subject_qc, networks=ANALYSIS_NETWORKS,
                  excluded_inputs=None, harmonize: str = "none", space: str = SPACE,
                  nbs: bool = False,
                  literature: bool = False, qcfc: bool = False) -> dict:
    """The ``inputs`` of :func:`build_report` at the standard output locations of each stage.

    Parameters
    ----------
    results_dir : path
        ``config["results_dir"]``.
    studies : list of str
        Study ids.
    subject_qc : path or None
        One subject's QC JSON: the denoising options the subject stage recorded.
    networks : sequence of str
    excluded_inputs : path, optional
        ``excluded_inputs.tsv`` when the workflow writes it.
    harmonize : str
        ``group.harmonize``; ``"combat"`` adds the ComBat pooled model's files.
    space : str
        The maps' template space (:func:`msnet.io.plan.analysis_space`).
    nbs : bool
        The edge-level analysis ran (``nbs.enabled``): adds ``nbs``, the files of
        :func:`msnet.nbs.output_paths`.
    literature : bool
        Literature mode ran beside the image studies (:func:`msnet.literature.
        literature_enabled`): adds its comparison, recovery and meta-regression tables.
    qcfc : bool
        QC-FC ran (``qcfc.enabled``): adds ``qcfc``, the files of
        :func:`msnet.qcfc.output_paths`.

    Returns
    -------
    dict
        As documented in :func:`build_report`.
    """
    from msnet.io.plan import study_qc_table

    r = Path(results_dir)
    group, pooled, clin, meta = r / "group", r / "group" / "pooled", r / "clinical", r / "meta"
    out = {
        "qc": [study_qc_table(results_dir, s) for s in studies],
        "subject_qc": str(subject_qc) if subject_qc else None,
        "group_study_tables": {s: str(group / f"study-{s}" / f"study-{s}_desc-MSvsHC_networks.tsv")
                               for s in studies},
        "group_exclusions": [str(pooled / "pooled_desc-exclusions.tsv"),
                             str(clin / "pooled_desc-clinicalexclusions.tsv")],
        "pooled_table": str(pooled / "pooled_desc-MSvsHC_networks.tsv"),
        "pooled_maps": {n: {k: str(pooled / map_name(f"pooled_network-{n}", k, space))
                            for k in ("t", "logpfwe")} for n in networks},
        "pooled_clusters": {n: str(pooled / f"pooled_network-{n}_clusters.tsv") for n in networks},
        "clinical_table": str(clin / "pooled_desc-clinical_networks.tsv"),
        "clinical_scatter": str(clin / "pooled_desc-partialregression_scatter.tsv"),
        "meta_tables": {k: str(meta / f"meta_desc-{k}_stats.tsv")
                        for k in ("networks", "loo", "egger", "metaregression")},
        "meta_maps": {n: {k: str(meta / map_name(f"meta_network-{n}", k, space))
                          for k in ("z", "logpfwe")} for n in networks},
        "meta_clusters": {n: str(meta / f"meta_network-{n}_clusters.tsv") for n in networks},
        "meta_vs_mega": str(meta / "meta_desc-metavsmega_stats.tsv"),
    }
    out["meta_tables"].update(moderators=str(meta / "meta_desc-studies_moderators.tsv"),
                              forest=str(meta / "meta_desc-forest_data.tsv"))
    if nbs:  # msnet.nbs: section "Edge-level differences"
        from msnet.nbs import output_paths

        out["nbs"] = output_paths(r / "nbs")
    if qcfc:  # msnet.qcfc: section "Motion (QC-FC)"
        from msnet.qcfc import output_paths as qcfc_paths

        out["qcfc"] = qcfc_paths(r / "qcfc")
    if excluded_inputs:
        out["excluded_inputs"] = str(excluded_inputs)
    if harmonize == "combat":  # msnet.harmonize: the pooled model on ComBat-harmonised data
        label = "pooled_harmonize-combat"
        out["combat_table"] = str(pooled / f"{label}_desc-MSvsHC_networks.tsv")
        out["combat_shrinkage"] = str(pooled / f"{label}_desc-shrinkage_stats.tsv")
        out["combat_maps"] = {n: {k: str(pooled / map_name(f"{label}_network-{n}", k, space))
                                  for k in ("t", "logpfwe")} for n in networks}
    if literature:  # msnet.literature beside the image studies
        from msnet.literature import literature_outputs

        lit = literature_outputs(r / "literature", networks, space, True, True)
        out["literature"] = {k: lit[k] for k in ("comparison", "recovery", "metaregression")}
    return out


def input_files(inputs: dict) -> list:
    """Every path in an ``inputs`` dict, flattened (for a Snakemake rule's ``input:``)."""
    if isinstance(inputs, (str, Path)):
        return [str(inputs)]
    values = inputs.values() if isinstance(inputs, dict) else inputs
    return [p for v in values if v for p in input_files(v)]
