"""Edge-level inference on the 300-ROI matrices: the Network-Based Statistic with covariates.

The subject stage writes each subject's Seitzman-300 Fisher-z matrix
(``*_atlas-Seitzman300_relmat.tsv``, :func:`msnet.connectivity.relmat`). This module tests
every edge (the 44,850 ROI pairs) for MS vs HC and for each clinical variable within MS,
per study and pooled, and controls the family-wise error over edges with the Network-Based
Statistic (NBS; Zalesky, Fornito & Bullmore 2010):

1. a GLM at every edge, ``z_edge ~ tested + covariates`` (pooled: one intercept per study,
   the study as a block), gives the t of the tested regressor;
2. edges with t above the primary threshold (``nbs.threshold_t``) form a graph whose
   connected components (edges that share a node, :mod:`scipy.sparse.csgraph`) are the
   candidate effects; with ``tail: both`` the components of t > thr and of t < -thr are
   formed separately (one sign per component, as the voxelwise clusters of
   :func:`msnet.stats.permuted_glm`), with ``positive``/``negative`` only one of them;
3. each component's **size** (number of edges, Zalesky 2010; ``bctpy.nbs_bct``) or
   **intensity** (sum of ``t - thr`` over its edges, the NBS toolbox's "intensity") is
   compared with the permutation distribution of the largest component (over both signs
   when two-sided), which gives family-wise error (FWE) corrected p-values:
   ``p = (1 + #{null max >= observed}) / (1 + n_perm)``.

The permutations are Freedman–Lane permutations within study (exchangeability blocks) run
by msnet's batched permutation engine, :func:`msnet.stats.permuted_glm` (the same engine,
float32 batches and compiled t kernel as the voxelwise group and clinical stages); this
module only gives it the edge graph (:class:`EdgeGraph`) in place of the voxel grid, and
the largest component of every permutation comes from one
:func:`scipy.sparse.csgraph.connected_components` call per batch of permutations.

Why not bctpy: ``bct.nbs_bct`` takes no covariates (a two-sample t only), cannot permute
within study, and recomputes a t per edge per permutation in a Python loop. With one study
and no covariates the two give the same component statistics and, on the same
permutations, the same null distribution (``tests/unit/test_nbs.py``);
``benchmarks/bench_nbs.py`` times both on the same input.

Design and sample follow the other stages exactly: MS vs HC adjusts for ``group.covariates``
(per study with ``group.min_residual_df``, as :mod:`msnet.group`); a clinical variable is
tested within MS adjusting for the other ``clinical.variables`` and ``clinical.covariates``,
studies lacking it are left out of its models (as :mod:`msnet.clinical`). Edges without a
value in every subject of a model (an ROI outside a subject's data) are left out of that
model and counted (``n_edges_missing``).

Outputs (:func:`nbs_analyses`, ``results/nbs/``): an analyses table, a component table, the
edges of the significant components, a per-network-pair summary, and two figures of the
pooled analyses (a matrix ordered by network and a :func:`nilearn.plotting.plot_connectome`
glass brain of the significant components).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from msnet import stats as st
from msnet.errors import MsnetInputError

LOG = logging.getLogger(__name__)

TAILS = ("both", "positive", "negative")
"""``nbs.tail``: components of both signs (FWE over both), or one sign only."""
STATISTICS = ("size", "intensity")
"""``nbs.statistic``: component size (edges) or intensity (sum of t - threshold)."""
GROUP_CONTRAST = "group"
"""The MS-vs-HC contrast's name in ``nbs.contrasts`` and the output tables."""
CLINICAL_CONTRASTS = ("disease_duration", "edss", "t2lv")

NBS_DEFAULTS = {
    "enabled": True,
    "contrasts": [GROUP_CONTRAST, "disease_duration", "edss"],
    "threshold_t": 3.0,
    "statistic": "size",
    "tail": "both",
    "n_permutations": 5000,
    "per_study": True,
    "alpha": 0.05,
    "permute_within_study": True,
    "seed": 0,
    "n_jobs": 1,
}
"""Options of the ``nbs`` config section (documented in the config schema)."""

BATCH_BYTES = 2**27
"""Memory budget of one batch of permutations (edges x permutations x 8 bytes per row of
the engine's product): about 30-60 permutations of the 44,850 edges at a time."""

ATLAS = "Seitzman300"


# --------------------------------------------------------------------------- graph


class EdgeGraph:
    """Connected components of supra-threshold edges: the NBS's "clusters".

    The columns of the data are the edges of an undirected graph on ``n_nodes`` nodes; two
    supra-threshold edges belong to one component when a path of supra-threshold edges joins
    them (they share a node, directly or through others). Implements the two methods
    :func:`msnet.stats.permuted_glm` asks of its voxel grid (``clusters`` and
    ``null_maxima``), so the permutation engine runs the NBS unchanged.

    Parameters
    ----------
    edges : array-like of int, shape (E, 2)
        Node pair of each column (``i < j`` not required).
    n_nodes : int
        Number of nodes.
    """

    def __init__(self, edges, n_nodes: int):
        edges = np.asarray(edges, np.int64).reshape(-1, 2)
        self.i, self.j = edges[:, 0].copy(), edges[:, 1].copy()
        self.n_nodes = int(n_nodes)

    @classmethod
    def complete(cls, n_nodes: int) -> "EdgeGraph":
        """Every pair of nodes, in :func:`numpy.triu_indices` order (bctpy's order)."""
        i, j = np.triu_indices(n_nodes, 1)
        return cls(np.column_stack([i, j]), n_nodes)

    def _components(self, T: np.ndarray, threshold: float, two_sided: bool):
        """Components of the supra-threshold edges of each row of ``T`` (B, E).

        Edges with t > threshold, and with t < -threshold when two-sided, are the edges of a
        graph that holds every row and sign on its own copy of the nodes, so one call of
        :func:`scipy.sparse.csgraph.connected_components` labels them all and the positive
        and negative components stay apart.

        Returns
        -------
        rows, cols : numpy.ndarray
            Row (permutation) and column (edge) of each supra-threshold edge.
        excess : numpy.ndarray
            ``|t| - threshold`` of each of those edges.
        negative : numpy.ndarray of bool
            Whether the edge is below ``-threshold``.
        labels : numpy.ndarray
            Component of each of those edges (labels are unique across rows and signs).
        n : int
            Number of labels (isolated nodes included).
        """
        from scipy import sparse
        from scipy.sparse import csgraph

        T = np.asarray(T)
        supra = (np.abs(T) if two_sided else T) > threshold
        rows, cols = np.nonzero(supra)
        values = T[rows, cols]
        negative = values < 0
        excess = np.abs(values) - threshold
        if rows.size == 0:
            return rows, cols, excess, negative, np.zeros(0, np.int64), 0
        layer = rows.astype(np.int64) * 2 + negative
        offset = layer * self.n_nodes
        u, v = self.i[cols] + offset, self.j[cols] + offset
        size = 2 * T.shape[0] * self.n_nodes
        adj = sparse.csr_matrix((np.ones(u.size, np.int8), (u, v)), shape=(size, size))
        n, node_label = csgraph.connected_components(adj, directed=False)
        return rows, cols, excess, negative, node_label[u], n

    def clusters(self, t, threshold: float, two_sided: bool):
        """Components of ``t > threshold`` (then of ``t < -threshold`` when two-sided).

        Returns
        -------
        labels : numpy.ndarray of int, shape (E,)
            Component of each edge (positive components first; 0 below threshold).
        sizes : numpy.ndarray of int
            Edges per component.
        signs : numpy.ndarray of int
            +1 / -1 per component.
        """
        t = np.asarray(t, float)
        _, cols, _, negative, lab, _ = self._components(t[None], threshold, two_sided)
        labels = np.zeros(t.shape, np.int64)
        # positive components first, then negative, each in order of first edge
        key = negative.astype(np.int64) * (lab.max() + 1 if lab.size else 1) + lab
        used, compact = np.unique(key, return_inverse=True)
        labels[cols] = compact + 1
        sizes = np.bincount(compact, minlength=used.size).astype(np.int64)
        signs = np.where(np.bincount(compact, weights=negative, minlength=used.size) > 0, -1, 1)
        return labels, sizes, signs.astype(np.int64)

    def null_maxima(self, T, two_sided: bool, threshold: float | None = None,
                    tfce: bool = False):
        """Largest component size and intensity of each row of ``T`` (rows = permutations).

        Intensity is the sum of ``|t| - threshold`` over a component's edges. The same
        components as :meth:`clusters`, found by a compiled union-find over the nodes
        (:func:`msnet._permkernels.graph_null_maxima`: one pass over the edges, no
        temporary arrays) because only the largest is needed; same return layout as
        :meth:`msnet.stats.VoxelGrid.null_maxima` (no TFCE on graphs: zeros).
        """
        from msnet import _permkernels as kern

        if tfce:
            raise ValueError("TFCE is not defined on an edge graph; use the NBS statistics")
        T = np.ascontiguousarray(T, dtype=float)
        out = (np.zeros(len(T), np.int64), np.zeros(len(T)), np.zeros(len(T)))
        if threshold is not None:
            kern.graph_null_maxima(T, bool(two_sided), float(threshold), self.i, self.j,
                                   self.n_nodes, out[0], out[1])
        return out


# --------------------------------------------------------------------------- statistic


@dataclass
class NBSResult:
    """Result of :func:`nbs` (arrays over the E edges unless said otherwise).

    Attributes
    ----------
    t, effect : numpy.ndarray
        Observed t and coefficient of the tested regressor (its own sign whatever the tail).
    df : int
    threshold : float
        Primary threshold on t.
    tail, statistic : str
    n_perm : int
    labels : numpy.ndarray of int
        Component of each edge (1 = first row of the component arrays; 0 = none).
    sizes, intensities, signs : numpy.ndarray, shape (n_components,)
        Edges, sum of ``|t| - threshold`` and sign of each component (largest first).
    p_size, p_intensity : numpy.ndarray, shape (n_components,)
        FWE p of each component by size and by intensity (NaN without permutations).
    h0_size, h0_intensity : numpy.ndarray, shape (n_perm,)
        Null distributions of the largest component.
    """

    t: np.ndarray
    effect: np.ndarray
    df: int
    threshold: float
    tail: str
    statistic: str
    n_perm: int
    labels: np.ndarray
    sizes: np.ndarray
    intensities: np.ndarray
    signs: np.ndarray
    p_size: np.ndarray
    p_intensity: np.ndarray
    h0_size: np.ndarray
    h0_intensity: np.ndarray

    @property
    def p_fwe(self) -> np.ndarray:
        """FWE p of each component by the chosen statistic."""
        return self.p_size if self.statistic == "size" else self.p_intensity


def nbs(Y, tested, confounds, graph: EdgeGraph, *, threshold: float = 3.0,
        tail: str = "both", statistic: str = "size", n_perm: int = 5000, seed=0,
        blocks=None, n_jobs: int = 1) -> NBSResult:
    """Network-Based Statistic for one regressor of a GLM at every edge (Freedman–Lane).

    Parameters
    ----------
    Y : array-like, shape (n, E)
        Edge values (Fisher z) of n subjects; columns are ``graph``'s edges.
    tested : array-like, shape (n,)
        Tested regressor (e.g. MS = 1, HC = 0).
    confounds : array-like, shape (n, q)
        Nuisance regressors including the intercept or the study indicators.
    graph : EdgeGraph
    threshold : float
        Primary threshold on t (strict ``>``, as ``bct.nbs_bct``).
    tail : {"both", "positive", "negative"}
        Components of both signs with the null maximum over both (FWE over both
        directions), or the positive (tested > 0) or negative tail only.
    statistic : {"size", "intensity"}
        Which statistic :attr:`NBSResult.p_fwe` uses (both are computed).
    n_perm : int
        Permutations (0: components without p-values).
    seed : int or sequence of int
        Seed of ``numpy.random.default_rng``.
    blocks : array-like, shape (n,), optional
        Exchangeability blocks (study): subjects are permuted within their block only.
    n_jobs : int
        Threads of the permutation engine.

    Returns
    -------
    NBSResult
    """
    if tail not in TAILS:
        raise ValueError(f"tail must be one of {TAILS}, not {tail!r}")
    if statistic not in STATISTICS:
        raise ValueError(f"statistic must be one of {STATISTICS}, not {statistic!r}")
    sign = -1.0 if tail == "negative" else 1.0
    x = sign * np.asarray(tested, float)
    res = st.permuted_glm(Y, x, confounds, n_perm=int(n_perm), seed=seed,
                          two_sided=tail == "both", blocks=blocks, n_jobs=n_jobs,
                          batch_bytes=BATCH_BYTES, graph=graph,
                          cluster_threshold_t=float(threshold))
    if res.clusters is not None:
        c = res.clusters
        labels, sizes, signs = c.labels, c.sizes, c.signs
        masses, p_size, p_mass = c.masses, c.p_fwe, c.p_fwe_mass
        h0_size, h0_mass = c.h0_max_size, c.h0_max_mass
    else:  # no permutations: the observed components only
        labels, sizes, signs = graph.clusters(res.t, threshold, tail == "both")
        order = np.argsort(-sizes, kind="stable")
        relabel = np.zeros(sizes.size + 1, np.int64)
        relabel[order + 1] = np.arange(1, sizes.size + 1)
        labels, sizes, signs = relabel[labels], sizes[order], signs[order]
        masses = np.bincount(labels, np.abs(res.t) - threshold, minlength=sizes.size + 1)[1:]
        p_size = p_mass = np.full(sizes.size, np.nan)
        h0_size = h0_mass = np.zeros(0)
    return NBSResult(t=sign * res.t, effect=sign * res.effect, df=res.df,
                     threshold=float(threshold), tail=tail, statistic=statistic,
                     n_perm=int(n_perm), labels=labels, sizes=np.asarray(sizes),
                     intensities=np.asarray(masses, float), signs=sign * np.asarray(signs),
                     p_size=np.asarray(p_size, float), p_intensity=np.asarray(p_mass, float),
                     h0_size=np.asarray(h0_size), h0_intensity=np.asarray(h0_mass))


def distinct_relabellings(tested, blocks=None) -> float:
    """Number of distinct assignments of the ``tested`` values that within-block
    permutations can produce (a multinomial coefficient per block, multiplied).

    With D of them the smallest attainable permutation p-value is about 1/D.
    """
    tested = np.asarray(tested, float)
    blocks = np.zeros(tested.size) if blocks is None else np.asarray(blocks)
    log_d = 0.0
    for b in pd.unique(blocks):
        values = tested[blocks == b]
        _, counts = np.unique(values, return_counts=True)
        log_d += math.lgamma(values.size + 1) - sum(math.lgamma(c + 1) for c in counts)
    return float(round(math.exp(min(log_d, 700.0)), 6))


# --------------------------------------------------------------------------- inputs


def read_relmat(path, rois) -> np.ndarray:
    """The upper-triangle edges (:func:`numpy.triu_indices` order) of one subject's matrix.

    Parameters
    ----------
    path : path
        ``*_atlas-Seitzman300_relmat.tsv`` (first column ``roi``, then one column per ROI).
    rois : sequence of str
        The expected ROI names, in order (:func:`msnet.atlas.seitzman_rois`).

    Returns
    -------
    numpy.ndarray, shape (n_rois * (n_rois - 1) / 2,), float32
        NaN where an edge has no value (an ROI without signal in this subject).

    Raises
    ------
    MsnetInputError
        The file cannot be read, is not an n_rois x n_rois matrix with the atlas's ROI
        names as rows and columns, holds a non-numeric or infinite value, is not
        symmetric, or has no finite edge at all.
    """
    rois = list(rois)
    n = len(rois)
    try:
        table = pd.read_csv(path, sep="\t", index_col=0, na_values=["n/a"])
    except (OSError, ValueError, pd.errors.ParserError) as err:
        raise MsnetInputError(f"{path}: cannot read this connectivity matrix ({err}).") from err
    fix = ("Re-run the subject stage for this subject (it writes the Seitzman-300 matrix "
           "with the ROI names as first column and header).")
    if table.shape != (n, n):
        raise MsnetInputError(f"{path}: the matrix is {table.shape[0]} x {table.shape[1]}, "
                              f"expected {n} x {n} ({ATLAS} ROIs). {fix}")
    if list(map(str, table.index)) != rois or list(map(str, table.columns)) != rois:
        raise MsnetInputError(f"{path}: rows and columns are not the {n} {ATLAS} ROIs in "
                              f"atlas order ({rois[0]} ... {rois[-1]}). {fix}")
    if any(kind not in "fi" for kind in (dt.kind for dt in table.dtypes)):
        values = table.apply(pd.to_numeric, errors="coerce")
        r, c = np.argwhere((values.isna() & table.notna()).to_numpy())[0]
        raise MsnetInputError(f"{path}: non-numeric value {table.iat[r, c]!r} at row "
                              f"{rois[r]}, column {rois[c]}. {fix}")
    z = table.to_numpy(np.float64)
    iu = np.triu_indices(n, 1)
    upper, lower = z[iu], z.T[iu]
    if np.isinf(upper).any() or np.isinf(lower).any():
        raise MsnetInputError(f"{path}: infinite Fisher z value(s); the subject stage writes "
                              f"n/a for |r| = 1. {fix}")
    if not np.isfinite(upper).any():
        raise MsnetInputError(f"{path}: no edge has a value (all n/a): the subject has no "
                              f"usable ROI signal. {fix}")
    same = (np.abs(upper - lower) <= 1e-5) | (np.isnan(upper) & np.isnan(lower))
    if not same.all():
        k = int(np.flatnonzero(~same)[0])
        raise MsnetInputError(f"{path}: the matrix is not symmetric (row {rois[iu[0][k]]}, "
                              f"column {rois[iu[1][k]]}: {upper[k]:g} vs {lower[k]:g}). {fix}")
    return upper.astype(np.float32)


def load_relmats(paths, rois) -> np.ndarray:
    """Stack :func:`read_relmat` of every path, (n_subjects, n_edges) float32."""
    n = len(rois)
    out = np.empty((len(paths), n * (n - 1) // 2), np.float32)
    for k, path in enumerate(paths):
        out[k] = read_relmat(path, rois)
    return out


# --------------------------------------------------------------------------- analyses


@dataclass
class _Analysis:
    """One NBS model: where, what, on whom (a design), and why it was skipped."""

    study_id: str
    contrast: str
    design: st.Design | None
    rows: np.ndarray | None
    reason: str | None
    n_ms: int | None = None
    n_hc: int | None = None


def _direction_names(contrast: str) -> tuple[str, str]:
    return ("MS>HC", "MS<HC") if contrast == GROUP_CONTRAST else ("positive", "negative")


def _group_analysis(subjects: pd.DataFrame, study_id: str, gopts: dict, pooled: bool):
    from msnet.group import _group_counts, _too_small

    data = subjects.copy()
    data["group_ms"] = (data["group"] == "MS").astype(float)
    if pooled:
        design = st.build_design(data, ["group_ms"], gopts["covariates"], study_col="study_id")
    else:
        design = st.build_design(data, ["group_ms"], gopts["covariates"],
                                 min_residual_df=gopts["min_residual_df"])
    n_ms, n_hc = _group_counts(design)
    reason = _too_small(n_ms, n_hc, design, int(gopts["min_per_group"]))
    if reason is None and pooled:
        X, _ = design.with_study_dummies()
        if X.shape[0] - X.shape[1] < 1:
            reason = f"no residual degrees of freedom (n {X.shape[0]}, {X.shape[1]} parameters)"
    return _Analysis(study_id, GROUP_CONTRAST, design, design.index.to_numpy(), reason, n_ms,
                     n_hc)


def _clinical_analysis(subjects: pd.DataFrame, variable: str, study_id: str, copts: dict,
                       pooled: bool):
    from msnet.clinical import _lacking, _unfit

    ms = subjects[subjects["group"] == "MS"]
    if variable not in ms.columns:
        return _Analysis(study_id, variable, None, None, f"no {variable} values")
    lacking = _lacking(ms, variable)
    sample = ms[~ms["study_id"].isin(lacking)]
    if sample.empty:
        return _Analysis(study_id, variable, None, None, f"no {variable} values")
    others = [w for w in copts["variables"] if w != variable] + list(copts["covariates"])
    design = st.build_design(sample, [variable], others, "study_id" if pooled else None)
    reason = _unfit(design, int(copts["min_subjects"]))
    if reason is None and pooled:
        X, _ = design.with_study_dummies()
        if X.shape[0] - X.shape[1] < 1:
            reason = f"no residual degrees of freedom (n {X.shape[0]}, {X.shape[1]} parameters)"
    return _Analysis(study_id, variable, design, design.index.to_numpy(), reason)


def plan_analyses(subjects: pd.DataFrame, options: dict, group_options: dict,
                  clinical_options: dict) -> list:
    """Every NBS model of the configured contrasts: pooled first, then each study.

    ``subjects`` are the included subjects (:func:`msnet.group.load_subjects` rows) with
    the index 0..n-1 of the rows of the edge matrix: a model's design index is its rows.
    """
    scopes = [("pooled", subjects)]
    if options["per_study"]:
        scopes += [(s, subjects[subjects["study_id"] == s])
                   for s in dict.fromkeys(subjects["study_id"])]
    out = []
    for study_id, part in scopes:
        pooled = study_id == "pooled"
        for contrast in options["contrasts"]:
            reason = None if pooled else _too_small_study(part, contrast, options,
                                                          group_options, clinical_options)
            if reason:
                out.append(_Analysis(study_id, contrast, None, None, reason))
            elif contrast == GROUP_CONTRAST:
                out.append(_group_analysis(part, study_id, group_options, pooled))
            else:
                out.append(_clinical_analysis(part, contrast, study_id, clinical_options,
                                              pooled))
    return out


def _too_small_study(part: pd.DataFrame, contrast: str, options: dict, group_options: dict,
                     clinical_options: dict) -> str | None:
    """Why a study's model cannot run, from its subject counts alone (before a design is
    built: most demo studies stop here): too few subjects for the group or clinical stage's
    rule, or too few distinct relabellings for a p-value below ``nbs.alpha`` (the design can
    only lose subjects, so neither can improve)."""
    alpha = float(options["alpha"])
    if contrast == GROUP_CONTRAST:
        n_ms = int((part["group"] == "MS").sum())
        n_hc = int((part["group"] == "HC").sum())
        if min(n_ms, n_hc) < int(group_options["min_per_group"]):
            return (f"fewer than {group_options['min_per_group']} subjects in a group "
                    f"(MS {n_ms}, HC {n_hc})")
        distinct = math.comb(n_ms + n_hc, n_ms)
    else:
        values = part.loc[part["group"] == "MS"].get(contrast)
        n = 0 if values is None else int(values.notna().sum())
        if n < int(clinical_options["min_subjects"]):
            return f"fewer than {clinical_options['min_subjects']} subjects ({n})"
        distinct = math.factorial(min(n, 20))
    if distinct * alpha <= 1.0:
        return (f"only {distinct} distinct relabellings of {contrast}: no permutation "
                f"p-value can be below alpha {alpha:g}")
    return None


def _model(analysis: _Analysis):
    """(tested, confounds, blocks) of an analysis's design."""
    design = analysis.design
    term = GROUP_CONTRAST_TERM if analysis.contrast == GROUP_CONTRAST else analysis.contrast
    if analysis.study_id == "pooled":
        X, cols = design.with_study_dummies()
    else:
        X, cols = design.X, design.columns
    k = cols.index(term)
    return X[:, k], np.delete(X, k, axis=1), design.studies


GROUP_CONTRAST_TERM = "group_ms"


def run_analysis(analysis: _Analysis, Y: np.ndarray, graph_edges: np.ndarray, n_nodes: int,
                 options: dict, seed) -> tuple[NBSResult | None, dict]:
    """Run one planned model: returns its :class:`NBSResult` (None when skipped) and its row
    of the analyses table."""
    row = {"study_id": analysis.study_id, "contrast": analysis.contrast,
           "n": None if analysis.design is None else int(len(analysis.design.index)),
           "n_ms": analysis.n_ms, "n_hc": analysis.n_hc}
    if analysis.design is not None:
        row["covariates"] = ",".join(analysis.design.covariates_used)
        row["covariates_dropped"] = "; ".join(f"{k}: {w}" for k, w in
                                              analysis.design.notes.items())
    if analysis.reason:
        return None, {**row, "status": "excluded", "reason": analysis.reason}
    tested, confounds, studies = _model(analysis)
    blocks = studies if options["permute_within_study"] else None
    alpha = float(options["alpha"])
    distinct = distinct_relabellings(tested, blocks)
    if distinct * alpha <= 1.0:
        return None, {**row, "status": "excluded", "reason": (
            f"only {distinct:.0f} distinct relabellings of {analysis.contrast}"
            f"{' within study' if blocks is not None else ''}: no permutation p-value can be "
            f"below alpha {alpha:g}")}
    Ys = Y[analysis.rows]
    complete = np.isfinite(Ys).all(axis=0)
    if not complete.any():
        return None, {**row, "status": "excluded",
                      "reason": "no edge has a value in every subject"}
    graph = EdgeGraph(graph_edges[complete], n_nodes)
    res = nbs(Ys[:, complete], tested, confounds, graph,
              threshold=float(options["threshold_t"]), tail=options["tail"],
              statistic=options["statistic"], n_perm=int(options["n_permutations"]),
              seed=seed, blocks=blocks, n_jobs=int(options["n_jobs"]))
    res = _expand_result(res, complete)
    p = res.p_fwe
    row.update(df=res.df, n_edges=int(complete.sum()),
               n_edges_missing=int((~complete).sum()),
               n_supra_positive=int(np.sum(res.t > res.threshold)),
               n_supra_negative=int(np.sum(res.t < -res.threshold)),
               n_components=int(res.sizes.size),
               max_size=int(res.sizes.max()) if res.sizes.size else 0,
               min_p_fwe=float(np.nanmin(p)) if p.size and np.isfinite(p).any() else np.nan,
               n_significant=int(np.sum(p < alpha)),
               status="ok", reason="")
    return res, row


def _expand_result(res: NBSResult, keep: np.ndarray) -> NBSResult:
    """Edge arrays over all edges (NaN t / 0 label where an edge was left out)."""
    if keep.all():
        return res
    for name in ("t", "effect"):
        full = np.full(keep.size, np.nan)
        full[keep] = getattr(res, name)
        setattr(res, name, full)
    labels = np.zeros(keep.size, np.int64)
    labels[keep] = res.labels
    res.labels = labels
    return res


# --------------------------------------------------------------------------- tables

ANALYSIS_COLUMNS = ["study_id", "contrast", "n", "n_ms", "n_hc", "df", "covariates",
                    "covariates_dropped", "n_edges", "n_edges_missing", "n_supra_positive",
                    "n_supra_negative", "n_components", "max_size", "min_p_fwe",
                    "n_significant", "status", "reason"]
"""Columns of ``nbs_desc-analyses_stats.tsv`` (one row per study x contrast)."""

COMPONENT_COLUMNS = ["study_id", "contrast", "component", "direction", "n_edges", "n_nodes",
                     "networks", "size", "intensity", "statistic", "p_fwe", "p_fwe_size",
                     "p_fwe_intensity", "significant"]
"""Columns of ``nbs_desc-components_stats.tsv``."""

EDGE_COLUMNS = ["study_id", "contrast", "component", "direction", "roi_a", "roi_b",
                "network_a", "network_b", "region_a", "region_b", "x_a", "y_a", "z_a", "x_b",
                "y_b", "z_b", "t", "beta"]
"""Columns of ``nbs_desc-edges_stats.tsv`` (edges of the significant components)."""

PAIR_COLUMNS = ["study_id", "contrast", "network_a", "network_b", "n_edges", "n_significant",
                "n_significant_positive", "n_significant_negative", "mean_t_significant",
                "mean_t"]
"""Columns of ``nbs_desc-networkpairs_stats.tsv``."""


def network_order(rois: pd.DataFrame) -> list:
    """Networks of the ROI table in msnet's order (analysis networks first)."""
    from msnet.atlas import network_names

    present = list(dict.fromkeys(rois["network"]))
    ordered = [n for n in network_names() if n in present]
    return ordered + sorted(set(present) - set(ordered))


def _pair_names(rois: pd.DataFrame, i, j):
    """Network pair of each edge with the networks in :func:`network_order` order."""
    rank = {n: k for k, n in enumerate(network_order(rois))}
    net = rois["network"].to_numpy()
    order = np.array([rank[x] for x in net])
    a, b = net[i], net[j]
    swap = order[i] > order[j]
    return np.where(swap, b, a), np.where(swap, a, b)


def component_rows(res: NBSResult, rois: pd.DataFrame, edges: np.ndarray, study_id: str,
                   contrast: str, alpha: float) -> tuple[list, list]:
    """Rows of the component table and of the edge table (significant components only)."""
    up, down = _direction_names(contrast)
    comp, edge_rows = [], []
    for k in range(res.sizes.size):
        members = np.flatnonzero(res.labels == k + 1)
        i, j = edges[members, 0], edges[members, 1]
        a, b = _pair_names(rois, i, j)
        pairs = pd.Series([f"{x}-{y}" for x, y in zip(a, b)]).value_counts(sort=False)
        pairs = pairs.sort_values(ascending=False, kind="stable")
        p = res.p_fwe[k]
        significant = bool(p < alpha)
        direction = up if res.signs[k] > 0 else down
        comp.append({"study_id": study_id, "contrast": contrast, "component": k + 1,
                     "direction": direction, "n_edges": int(res.sizes[k]),
                     "n_nodes": int(np.unique(np.r_[i, j]).size),
                     "networks": "; ".join(f"{name} ({count})" for name, count in pairs.items()),
                     "size": int(res.sizes[k]), "intensity": float(res.intensities[k]),
                     "statistic": res.statistic, "p_fwe": float(p),
                     "p_fwe_size": float(res.p_size[k]),
                     "p_fwe_intensity": float(res.p_intensity[k]), "significant": significant})
        if not significant:
            continue
        r = rois
        for e, ii, jj, na, nb in zip(members, i, j, rois["network"].to_numpy()[i],
                                     rois["network"].to_numpy()[j]):
            edge_rows.append({
                "study_id": study_id, "contrast": contrast, "component": k + 1,
                "direction": direction, "roi_a": r.at[ii, "roi"], "roi_b": r.at[jj, "roi"],
                "network_a": na, "network_b": nb, "region_a": r.at[ii, "region"],
                "region_b": r.at[jj, "region"], "x_a": r.at[ii, "x"], "y_a": r.at[ii, "y"],
                "z_a": r.at[ii, "z"], "x_b": r.at[jj, "x"], "y_b": r.at[jj, "y"],
                "z_b": r.at[jj, "z"], "t": float(res.t[e]), "beta": float(res.effect[e])})
    return comp, edge_rows


def network_pair_rows(res: NBSResult, rois: pd.DataFrame, edges: np.ndarray, study_id: str,
                      contrast: str, alpha: float) -> list:
    """Per network pair: edges, edges in significant components (by sign), their mean t,
    and the mean t of all the pair's edges."""
    a, b = _pair_names(rois, edges[:, 0], edges[:, 1])
    sig_comp = np.r_[False, res.p_fwe < alpha]
    sig = sig_comp[res.labels]
    frame = pd.DataFrame({"network_a": a, "network_b": b, "t": res.t, "sig": sig,
                          "pos": sig & (res.t > 0), "neg": sig & (res.t < 0),
                          "t_sig": np.where(sig, res.t, np.nan)})
    order = {n: k for k, n in enumerate(network_order(rois))}
    out = (frame.groupby(["network_a", "network_b"], sort=False)
           .agg(n_edges=("t", "size"), n_significant=("sig", "sum"),
                n_significant_positive=("pos", "sum"), n_significant_negative=("neg", "sum"),
                mean_t_significant=("t_sig", "mean"), mean_t=("t", "mean"))
           .reset_index())
    out = out.iloc[np.lexsort((out["network_b"].map(order), out["network_a"].map(order)))]
    out.insert(0, "contrast", contrast)
    out.insert(0, "study_id", study_id)
    return out.to_dict("records")


COLUMN_DESCRIPTIONS = {
    "contrast": "What the model tests: group = MS vs HC (positive t: MS > HC); a clinical "
                "variable = its slope within MS (positive t: FC rises with it).",
    "df": "Residual degrees of freedom of the edge GLM.",
    "n_edges": "Edges of the 300-ROI matrix: tested (analyses table), in the component "
               "(components table) or in the network pair (network-pair table).",
    "n_edges_missing": "Edges left out of the model: no value in every one of its subjects.",
    "n_supra_positive": "Edges with t > nbs.threshold_t.",
    "n_supra_negative": "Edges with t < -nbs.threshold_t.",
    "n_components": "Connected components of the supra-threshold edges (both signs).",
    "max_size": "Edges in the largest component.",
    "min_p_fwe": "Smallest component FWE p (by nbs.statistic).",
    "n_significant": "Components (analyses table) or edges in components (network-pair table) "
                     "with FWE p < nbs.alpha.",
    "component": "Component number within its model (1 = largest).",
    "n_nodes": "ROIs the component's edges join.",
    "networks": "Network pairs of the component's edges with their edge counts, most first.",
    "size": "Component size: its number of edges (Zalesky 2010).",
    "intensity": "Component intensity: sum over its edges of |t| - nbs.threshold_t.",
    "statistic": "The component statistic that decides significance (nbs.statistic).",
    "p_fwe": "Component FWE p by nbs.statistic: (1 + permutations whose largest component "
             "is at least as large) / (1 + permutations).",
    "p_fwe_size": "Component FWE p by size.",
    "p_fwe_intensity": "Component FWE p by intensity.",
    "significant": "p_fwe < nbs.alpha.",
    "roi_a": "First ROI of the edge (Seitzman-300 name).",
    "roi_b": "Second ROI of the edge.",
    "region_a": "Anatomical label of roi_a (Seitzman 2018).",
    "region_b": "Anatomical label of roi_b.",
    "x_a": "MNI x of roi_a (mm).", "y_a": "MNI y of roi_a (mm).", "z_a": "MNI z of roi_a (mm).",
    "x_b": "MNI x of roi_b (mm).", "y_b": "MNI y of roi_b (mm).", "z_b": "MNI z of roi_b (mm).",
    "t": "t of the tested regressor at the edge.",
    "beta": "Coefficient of the tested regressor at the edge (Fisher z per unit: MS - HC, or "
            "per unit of the clinical variable).",
    "n_significant_positive": "Edges of the pair in significant components with t > 0.",
    "n_significant_negative": "Edges of the pair in significant components with t < 0.",
    "mean_t_significant": "Mean t of the pair's edges in significant components.",
    "mean_t": "Mean t of all the pair's edges.",
}
"""BIDS column descriptions of the NBS tables (over :data:`msnet.derivatives.COLUMNS`)."""


def write_nbs_table(df: pd.DataFrame, path) -> None:
    """Write an NBS table and its column dictionary (NBS meanings first, then msnet's)."""
    from msnet.derivatives import sidecar_path, table_sidecar
    from msnet.io.atomic import write_json, write_tsv

    write_tsv(df, path)
    sidecar = table_sidecar(df.columns)
    sidecar.update({c: {"Description": COLUMN_DESCRIPTIONS[c]} for c in df.columns
                    if c in COLUMN_DESCRIPTIONS})
    write_json(sidecar, sidecar_path(path))


# --------------------------------------------------------------------------- file level


def output_paths(out_dir) -> dict:
    """The files :func:`nbs_analyses` writes (the one place that names them)."""
    out_dir = Path(out_dir)
    paths = {k: str(out_dir / f"nbs_desc-{k}_stats.tsv")
             for k in ("analyses", "components", "edges", "networkpairs")}
    paths["figures"] = {kind: {ext: str(out_dir / f"pooled_desc-nbs{kind}_figure.{ext}")
                               for ext in ("png", "svg")}
                        for kind in ("matrix", "connectome")}
    return paths


def _resolve(options, group_options, clinical_options):
    from msnet.clinical import CLINICAL_DEFAULTS
    from msnet.group import GROUP_DEFAULTS

    opts = st.resolve_options(options, NBS_DEFAULTS, "nbs")
    if opts["tail"] not in TAILS:
        raise MsnetInputError(f"config nbs.tail={opts['tail']!r}: must be one of {TAILS}")
    if opts["statistic"] not in STATISTICS:
        raise MsnetInputError(f"config nbs.statistic={opts['statistic']!r}: must be one of "
                              f"{STATISTICS}")
    unknown = [c for c in opts["contrasts"] if c not in (GROUP_CONTRAST, *CLINICAL_CONTRASTS)]
    if unknown:
        raise MsnetInputError(f"config nbs.contrasts: unknown {', '.join(map(str, unknown))}; "
                              f"use {GROUP_CONTRAST} and/or {', '.join(CLINICAL_CONTRASTS)}.")
    gopts = st.resolve_options(group_options, GROUP_DEFAULTS, "group")
    copts = st.resolve_options(clinical_options, CLINICAL_DEFAULTS, "clinical")
    return opts, gopts, copts


def nbs_analyses(participants_tsvs: dict, qc_jsons, relmats, out_dir, options=None,
                 group_options=None, clinical_options=None) -> dict:
    """Every configured NBS model (pooled and per study), its tables and the pooled figures.

    Parameters
    ----------
    participants_tsvs : dict
        study_id -> ``participants.tsv``.
    qc_jsons : list of path
        Every subject's QC file (the include decision, mean FD).
    relmats : list of path
        Every subject's ``*_atlas-Seitzman300_relmat.tsv`` (matched to the QC files by folder
        and ``sub-<label>``; only the included subjects' are read).
    out_dir : path
        ``results/nbs``.
    options : dict
        ``nbs`` options (:data:`NBS_DEFAULTS`).
    group_options, clinical_options : dict
        The ``group`` and ``clinical`` sections (covariates, minimum sample sizes, clinical
        variables), so the models are those of the group and clinical stages.

    Returns
    -------
    dict
        :func:`output_paths`.
    """
    import time

    from msnet.atlas import seitzman_rois
    from msnet.group import _index_files, _need, _subject_key, load_subjects

    opts, gopts, copts = _resolve(options, group_options, clinical_options)
    paths = output_paths(out_dir)
    c0 = time.process_time()
    subjects, _ = load_subjects(participants_tsvs, qc_jsons)
    included = subjects[subjects["include"]].reset_index(drop=True)
    index = _index_files(relmats, "connectivity matrices")
    files = [_need(index, _subject_key(q), "connectivity matrix")
             for q in _included_qc(qc_jsons, subjects)]
    rois = seitzman_rois()
    Y = load_relmats(files, rois["roi"])
    LOG.info("NBS: read %d matrices (%d edges) in %.1f s CPU", len(files), Y.shape[1],
             time.process_time() - c0)
    n_nodes = len(rois)
    edges = np.column_stack(np.triu_indices(n_nodes, 1))
    analyses = plan_analyses(included, opts, gopts, copts)
    rows, comps, edge_rows, pairs = [], [], [], []
    alpha = float(opts["alpha"])
    study_index = {s: k for k, s in enumerate(dict.fromkeys(included["study_id"]))}
    pooled_results = {}
    for analysis in analyses:
        seed = [int(opts["seed"]), 300, opts["contrasts"].index(analysis.contrast),
                study_index.get(analysis.study_id, len(study_index))]
        c1 = time.process_time()
        res, row = run_analysis(analysis, Y, edges, n_nodes, opts, seed)
        rows.append(row)
        if res is None:
            continue
        LOG.info("NBS %s %s: n %s, %d components, min p_FWE %s (%.1f s CPU)",
                 analysis.study_id, analysis.contrast, row["n"], row["n_components"],
                 row["min_p_fwe"], time.process_time() - c1)
        c, e = component_rows(res, rois, edges, analysis.study_id, analysis.contrast, alpha)
        comps += c
        edge_rows += e
        pairs += network_pair_rows(res, rois, edges, analysis.study_id, analysis.contrast,
                                   alpha)
        if analysis.study_id == "pooled":
            pooled_results[analysis.contrast] = res
    for key, table, columns in (("analyses", rows, ANALYSIS_COLUMNS),
                                ("components", comps, COMPONENT_COLUMNS),
                                ("edges", edge_rows, EDGE_COLUMNS),
                                ("networkpairs", pairs, PAIR_COLUMNS)):
        write_nbs_table(pd.DataFrame(table, columns=columns), paths[key])
    stem = {k: Path(v["png"]).with_suffix("") for k, v in paths["figures"].items()}
    plot_nbs_matrix(pooled_results, rois, alpha, stem["matrix"], network_order(rois))
    plot_nbs_connectome(pooled_results, rois, alpha, stem["connectome"])
    LOG.info("NBS: done in %.1f s CPU", time.process_time() - c0)
    return paths


def _included_qc(qc_jsons, subjects: pd.DataFrame) -> list:
    """The QC files of the included subjects, in the order of ``subjects``' included rows
    (:func:`msnet.group.load_subjects` keeps the order of ``qc_jsons``)."""
    qc_jsons = list(qc_jsons)
    return [q for q, keep in zip(qc_jsons, subjects["include"].to_numpy()) if keep]


def nbs_methods_text(options: dict, group_covariates, clinical: dict) -> str:
    """The methods paragraph of the NBS from the options used (:func:`msnet.report.methods_text`
    adds the citation of Zalesky et al. 2010 where it says ``{zalesky}`` and Freedman-Lane's
    reference where it says ``{winkler}``)."""
    o = {**NBS_DEFAULTS, **(options or {})}
    contrasts = [_label(c) for c in o["contrasts"]]
    tail = {"both": "|t| (components of positive and negative edges formed separately, the "
                    "null maximum taken over both signs)",
            "positive": "t (positive effects only)",
            "negative": "-t (negative effects only)"}[o["tail"]]
    stat = ("size (number of edges)" if o["statistic"] == "size"
            else "intensity (sum of t minus the threshold over its edges)")
    scope = "per study and pooled" if o["per_study"] else "pooled"
    within = " within study" if o["permute_within_study"] else ""
    cov = ", ".join(map(_label, group_covariates)) or "no covariates"
    ccov = ", ".join(map(_label, clinical.get("covariates", []))) or "no covariates"
    return (
        "Edge-level differences. Every edge of the Seitzman 300-ROI Fisher-z matrices "
        f"(44,850 edges) was tested for {', '.join(contrasts)}, {scope}, with the "
        f"Network-Based Statistic {{zalesky}}: a GLM at each edge (MS vs HC adjusted for "
        f"{cov}; each clinical variable within MS adjusted for the other clinical variables "
        f"and {ccov}; pooled models with one intercept per study), a primary threshold of "
        f"{tail} > {float(o['threshold_t']):g}, connected components of the supra-threshold "
        f"edges, and family-wise error corrected p-values of each component's {stat} from "
        f"the maximum over {int(o['n_permutations'])} Freedman-Lane permutations{within} "
        f"{{winkler}} (significant at p < {float(o['alpha']):g}). Models with too few "
        "distinct permutations to reach that level were not run.")


def _p_text(p: float) -> str:
    return "< 0.001" if p < 0.001 else f"= {p:.3f}"


READABLE = {GROUP_CONTRAST: "MS vs HC", "disease_duration": "disease duration",
            "edss": "EDSS", "t2lv": "T2 lesion volume", "mean_fd": "mean FD"}
"""Names of the contrasts and covariates in the report's sentences."""


def _label(name: str) -> str:
    return READABLE.get(name, name.replace("_", " "))


def nbs_verdict(analyses: pd.DataFrame, components: pd.DataFrame | None,
                edges: pd.DataFrame | None, options: dict, simulate: dict | None = None) -> str:
    """One paragraph of the report: per pooled contrast, the significant components (size,
    direction, main network pair, p); how many study models ran and found one; and, for the
    demo, whether the planted edge effect (``simulate.edge_effect``) was recovered.

    Parameters
    ----------
    analyses, components, edges : pandas.DataFrame
        The tables :func:`nbs_analyses` writes (``components``/``edges`` may be None).
    options : dict
        The ``nbs`` options used.
    simulate : dict, optional
        The ``simulate`` config section when the data are simulated.
    """
    alpha = float(options["alpha"])
    out = []
    comps = components if components is not None else pd.DataFrame(columns=COMPONENT_COLUMNS)
    for row in analyses[analyses["study_id"].astype(str) == "pooled"].itertuples():
        label = _label(row.contrast)
        if row.status != "ok":
            out.append(f"{label} (pooled): not run ({row.reason}).")
            continue
        sig = comps[(comps["study_id"].astype(str) == "pooled")
                    & (comps["contrast"] == row.contrast)
                    & (comps["p_fwe"] < alpha)]
        if sig.empty:
            out.append(f"{label} (pooled, n = {int(row.n)}): no component with FWE p < "
                       f"{alpha:g} (smallest p {row.min_p_fwe:.3g}).")
            continue
        items = [f"{int(c.n_edges):,} edges {c.direction} (largest network pair "
                 f"{str(c.networks).split(';')[0]}; p {_p_text(c.p_fwe)})"
                 for c in sig.itertuples()]
        out.append(f"{label} (pooled, n = {int(row.n)}): {len(sig)} component"
                   f"{'s' if len(sig) > 1 else ''} with FWE p < {alpha:g}: "
                   + "; ".join(items) + ".")
    studies = analyses[analyses["study_id"].astype(str) != "pooled"]
    if len(studies):
        ran = studies[studies["status"] == "ok"]
        hits = ran[ran["n_significant"] > 0]
        out.append(f"Per-study models: {len(ran)} of {len(studies)} ran (the others too small "
                   f"for a permutation p below {alpha:g} or for the stage's sample-size rules); "
                   f"{len(hits)} found a significant component"
                   + (" (" + ", ".join(f"{h.study_id} {_label(h.contrast)}"
                                       for h in hits.itertuples()) + ")"
                      if 0 < len(hits) <= 8 else "") + ".")
    if simulate is not None:
        r = float((simulate or {}).get("edge_effect", 0.0))
        if r <= 0:
            out.append("The simulation planted no edge-level effect (simulate.edge_effect: 0): "
                       "a significant pooled component would be a false positive.")
        elif GROUP_CONTRAST in set(analyses["contrast"]):
            from msnet.simulate import EDGE_EFFECT_NETWORKS, planted_edges

            a, b = EDGE_EFFECT_NETWORKS
            n_planted = int(planted_edges().sum())
            e = edges if edges is not None else pd.DataFrame(columns=EDGE_COLUMNS)
            e = e[(e["study_id"].astype(str) == "pooled") & (e["contrast"] == GROUP_CONTRAST)]
            hit = e[(((e["network_a"] == a) & (e["network_b"] == b))
                     | ((e["network_a"] == b) & (e["network_b"] == a)))
                    & (e["direction"] == "MS<HC")]
            out.append(
                f"The simulation planted {a}-{b} hypo-connectivity in MS (simulate.edge_effect: "
                f"{r:g}, all {n_planted:,} {a}-{b} edges): {len(hit):,} of them "
                f"({100 * len(hit) / n_planted:.0f} %) are in significant pooled MS<HC "
                f"components, which hold {len(e):,} edges in all "
                f"({100 * len(hit) / max(len(e), 1):.0f} % planted).")
    return " ".join(out)


# --------------------------------------------------------------------------- figures
# Drawn here rather than in msnet.plotting (same conventions: own Figure, PNG + SVG written
# atomically by msnet.plotting.save_figure, text sizes of the report) because only the
# nbs_analyses job draws them.


def _contrast_title(contrast: str) -> str:
    from msnet.plotting import VARIABLE_LABELS

    return "MS vs HC" if contrast == GROUP_CONTRAST else VARIABLE_LABELS.get(contrast, contrast)


def _significant_edges(res: NBSResult, alpha: float) -> np.ndarray:
    """Whether each edge belongs to a component with FWE p < ``alpha``."""
    return np.r_[False, np.asarray(res.p_fwe) < alpha][res.labels]


def plot_nbs_matrix(results: dict, rois: pd.DataFrame, alpha: float, out_stem,
                    networks=None) -> dict:
    """Edge t matrices of the pooled NBS models, ROIs ordered by network.

    One panel per contrast: below the diagonal the t of every edge, above it only the edges
    of components with FWE p < ``alpha`` (red: positive t, e.g. MS > HC; blue: negative);
    lines separate the networks, labelled on the left.

    Parameters
    ----------
    results : dict
        Contrast -> :class:`NBSResult` (edges in ``numpy.triu_indices`` order).
    rois : pandas.DataFrame
        :func:`msnet.atlas.seitzman_rois` (``network`` column).
    alpha : float
    out_stem : path
    networks : list of str, optional
        Network order (default :func:`network_order`).

    Returns
    -------
    dict
        ``{"png": path, "svg": path}``.
    """
    import matplotlib

    from msnet.plotting import _STYLE, FS, FS_TITLE, MAX_WIDTH_IN, _new_figure, _no_data, \
        save_figure

    networks = list(networks or network_order(rois))
    rank = {n: k for k, n in enumerate(networks)}
    order = np.argsort([rank[n] for n in rois["network"]], kind="stable")
    n = len(rois)
    iu = np.triu_indices(n, 1)
    lower = np.tril(np.ones((n, n), bool), -1)
    with matplotlib.rc_context(_STYLE):
        panels = max(1, len(results))
        fig = _new_figure(min(MAX_WIDTH_IN, 0.6 + 3.7 * panels), 4.4)
        axes = fig.subplots(1, panels, squeeze=False)[0]
        if not results:
            _no_data(axes[0], "no pooled NBS model was run")
            return save_figure(fig, out_stem)
        vmax = max(float(np.nanmax(np.abs(r.t))) if np.isfinite(r.t).any() else 1.0
                   for r in results.values())
        counts = np.array([np.sum(rois["network"].to_numpy() == net) for net in networks])
        bounds = np.cumsum(counts)
        image = None
        for k, (ax, (contrast, res)) in enumerate(zip(axes, results.items())):
            sig = _significant_edges(res, alpha)
            full = np.full((n, n), np.nan)
            full[iu] = res.t
            full.T[iu] = res.t
            marked = np.zeros((n, n), bool)
            marked[iu] = sig
            marked.T[iu] = sig
            full, marked = full[np.ix_(order, order)], marked[np.ix_(order, order)]
            shown = np.where(lower | marked.T & lower.T, full, np.nan)
            image = ax.imshow(shown, cmap="RdBu_r", vmin=-vmax, vmax=vmax,
                              interpolation="nearest")
            for b in bounds[:-1]:
                ax.axhline(b - 0.5, color="0.3", lw=0.4)
                ax.axvline(b - 0.5, color="0.3", lw=0.4)
            ax.set_yticks(bounds - counts / 2.0)
            ax.set_yticklabels(networks if k == 0 else [], fontsize=6.5)
            ax.set_xticks([])
            ax.set_title(f"{_contrast_title(contrast)}\n{int(sig.sum()):,} edges in "
                         "significant components", fontsize=FS)
        fig.colorbar(image, ax=list(axes), shrink=0.7, label="edge t")
        fig.suptitle(f"Pooled NBS: t of every edge below the diagonal, edges of components "
                     f"with FWE p < {alpha:g} above", x=0.01, ha="left", fontsize=FS_TITLE)
        return save_figure(fig, out_stem)


MAX_CONNECTOME_EDGES = 150
"""Most edges drawn per glass brain (the largest |t| of the significant components); the
title says when there are more, and the edge table lists them all."""


def plot_nbs_connectome(results: dict, rois: pd.DataFrame, alpha: float, out_stem) -> dict:
    """Glass brains (:func:`nilearn.plotting.plot_connectome`) of the significant components
    of the pooled NBS models, one row per contrast that has one.

    Edges are coloured by t (red positive, blue negative), nodes by network (legend); at
    most :data:`MAX_CONNECTOME_EDGES` edges (largest |t|) are drawn per contrast. Without
    any significant component the figure says so (and nilearn is not imported).
    """
    import matplotlib
    from matplotlib.lines import Line2D

    from msnet.plotting import _STYLE, FS, FS_SMALL, _frozen_gc, _new_figure, _no_data, \
        save_figure

    n = len(rois)
    iu = np.triu_indices(n, 1)
    shown = {c: _significant_edges(r, alpha) for c, r in results.items()}
    shown = {c: s for c, s in shown.items() if s.any()}
    with matplotlib.rc_context(_STYLE):
        if not shown:
            fig = _new_figure(6.0, 1.0)
            ax = fig.add_subplot()
            ax.set_axis_off()
            names = ", ".join(_contrast_title(c) for c in results) or "no model"
            _no_data(ax, f"No pooled NBS component with FWE p < {alpha:g} ({names}).")
            return save_figure(fig, out_stem)
        from nilearn import plotting

        fig = _new_figure(10.5, 3.1 * len(shown) + 0.5, constrained=False)
        coords = rois[["x", "y", "z"]].to_numpy(float)
        network = rois["network"].to_numpy()
        cmap = matplotlib.colormaps["tab20"]
        colour = {net: cmap((2 * k) % 20 + (k // 10) % 2)  # unlike neighbours first
                  for k, net in enumerate(network_order(rois))}
        height = (1.0 - 0.5 / fig.get_figheight()) / len(shown)
        used = set()
        for row, (contrast, sig) in enumerate(shown.items()):
            res = results[contrast]
            axes = [0.0, 1.0 - (row + 1) * height, 1.0, height * 0.86]
            idx = np.flatnonzero(sig)
            keep = idx[np.argsort(-np.abs(res.t[idx]), kind="stable")[:MAX_CONNECTOME_EDGES]]
            nodes = np.unique(np.r_[iu[0][keep], iu[1][keep]])
            pos = np.full(n, -1)
            pos[nodes] = np.arange(nodes.size)
            adj = np.zeros((nodes.size, nodes.size))
            adj[pos[iu[0][keep]], pos[iu[1][keep]]] = res.t[keep]
            adj += adj.T
            vmax = float(np.abs(res.t[keep]).max())
            used |= set(network[nodes])
            with _frozen_gc():
                plotting.plot_connectome(
                    adj, coords[nodes], node_color=[colour[x] for x in network[nodes]],
                    node_size=12, edge_cmap="RdBu_r", edge_vmin=-vmax, edge_vmax=vmax,
                    edge_kwargs={"linewidth": 0.8}, colorbar=True, figure=fig, axes=axes,
                    display_mode="lzr")
            drawn = "" if keep.size == idx.size else f" ({keep.size} largest |t| drawn)"
            fig.text(0.01, 1.0 - row * height - 0.01,
                     f"{_contrast_title(contrast)}: {idx.size:,} edges in components with "
                     f"FWE p < {alpha:g}{drawn}", ha="left", va="top", fontsize=FS)
        handles = [Line2D([], [], linestyle="", marker="o", markersize=6,
                          markerfacecolor=colour[c], markeredgecolor="none", label=c)
                   for c in colour if c in used]
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 7),
                   fontsize=FS_SMALL, frameon=False, bbox_to_anchor=(0.5, 0.0))
        return save_figure(fig, out_stem)
