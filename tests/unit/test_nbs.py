"""Network-Based Statistic (msnet.nbs): equivalence with bctpy, recovery, calibration, inputs."""

import numpy as np
import pandas as pd
import pytest

from msnet import nbs as N
from msnet import stats as st
from msnet.errors import MsnetInputError


def _edges_to_mats(Y, n_nodes, rows):
    """Subjects' edge vectors (triu order) as bctpy's (N, N, subjects) stack."""
    i, j = np.triu_indices(n_nodes, 1)
    M = np.zeros((n_nodes, n_nodes, len(rows)))
    for k, r in enumerate(rows):
        M[i, j, k] = Y[r]
        M[j, i, k] = Y[r]
    return M


class _ReplayRandomState(np.random.RandomState):
    """A RandomState whose ``permutation`` replays given permutations (drives bctpy)."""

    def __init__(self, perms):
        super().__init__(0)
        self.perms = list(perms)

    def permutation(self, n):  # noqa: D102 (bctpy calls rng.permutation(nx + ny))
        return self.perms.pop(0)


@pytest.mark.parametrize("tail", ["right", "left"])
def test_equals_bctpy_nbs_on_the_same_permutations(monkeypatch, tail):
    """No covariates, one study: the observed component sizes, the null distribution of the
    largest component and the p-values equal bctpy's nbs_bct on the same permutations
    (bctpy counts p = #{null >= size} / k, msnet (1 + #) / (1 + k))."""
    bct = pytest.importorskip("bct")
    rng = np.random.default_rng(7)
    n_nodes, nx, ny, k = 16, 11, 9, 200
    n = nx + ny
    i, j = np.triu_indices(n_nodes, 1)
    Y = rng.standard_normal((n, i.size))
    block = np.flatnonzero((i < 6) & (j < 6))  # a planted component among nodes 0-5
    Y[:nx, block] += 1.3 if tail == "right" else -1.3
    perms = [rng.permutation(n) for _ in range(k)]
    pv, adj, null = bct.nbs_bct(_edges_to_mats(Y, n_nodes, range(nx)),
                                _edges_to_mats(Y, n_nodes, range(nx, n)), 2.5, k=k, tail=tail,
                                seed=_ReplayRandomState(perms))
    # bctpy permutes the data columns (subject perm[c] takes label c); msnet permutes the
    # design rows (subject r takes label idx[r]): idx is the inverse permutation
    queue = [np.argsort(p) for p in perms]

    def replay(rng_, b, n_, blocks=None):
        out = np.array(queue[:b])
        del queue[:b]
        return out

    monkeypatch.setattr(st, "draw_permutations", replay)
    tested = np.r_[np.ones(nx), np.zeros(ny)]
    res = N.nbs(Y, tested, np.ones((n, 1)), N.EdgeGraph.complete(n_nodes), threshold=2.5,
                tail="positive" if tail == "right" else "negative", n_perm=k)
    np.testing.assert_array_equal(res.h0_size, null)
    # bctpy's components (its adj numbers them from 1 in its own order) have the same sizes
    bct_sizes = np.sort([np.sum(adj[i, j] == c) for c in range(1, int(adj.max()) + 1)])
    np.testing.assert_array_equal(np.sort(res.sizes), bct_sizes)
    bct_p = {int(np.sum(adj[i, j] == c)): p for c, p in enumerate(pv, start=1)}
    for size, p in zip(res.sizes, res.p_size):
        assert p == pytest.approx((1 + k * bct_p[int(size)]) / (1 + k), abs=1e-12)
    assert res.p_size[0] < 0.05 and np.isin(np.flatnonzero(res.labels == 1), block).mean() > 0.8
    assert np.all(res.signs == (1 if tail == "right" else -1))


def test_compiled_null_equals_scipy_components():
    """The union-find null (largest size and intensity) equals the scipy.sparse.csgraph
    components of the observed-map path, both signs, on random maps."""
    rng = np.random.default_rng(3)
    graph = N.EdgeGraph.complete(25)
    T = rng.standard_normal((40, 300)) * 1.6
    sizes, masses, _ = graph.null_maxima(T, True, 2.0)
    for b, t in enumerate(T):
        labels, s, signs = graph.clusters(t, 2.0, True)
        mass = np.bincount(labels, np.abs(t) - 2.0, minlength=s.size + 1)[1:]
        assert sizes[b] == (s.max() if s.size else 0)
        assert masses[b] == pytest.approx(mass.max() if s.size else 0.0, rel=1e-12)
        for c in range(1, s.size + 1):  # one sign per component
            assert np.unique(np.sign(t[labels == c])).size == 1
    one, _, _ = graph.null_maxima(T, False, 2.0)
    assert np.all(one <= sizes)


def _block_data(rng, n_nodes=30, n_per_group=(12, 10), studies=2, effect=0.0):
    """Two studies with study-level shifts and an age covariate; MS subjects' edges between
    nodes 0-7 and 8-15 lowered by ``effect`` (a network-pair hypo-connectivity)."""
    i, j = np.triu_indices(n_nodes, 1)
    planted = (i < 8) & (j >= 8) & (j < 16)
    rows = []
    for s in range(studies):
        for g, m in zip((1, 0), n_per_group):
            for _ in range(m):
                rows.append({"study": s, "ms": g, "age": rng.normal(40, 10)})
    table = pd.DataFrame(rows)
    Y = rng.standard_normal((len(table), i.size)) + table["study"].to_numpy()[:, None] * 0.5
    Y += 0.02 * (table["age"].to_numpy()[:, None] - 40)
    Y[np.ix_(table["ms"].to_numpy() == 1, planted)] -= effect
    dummies = (table["study"].to_numpy()[:, None] == np.arange(studies)).astype(float)
    age = table["age"] - table.groupby("study")["age"].transform("mean")
    confounds = np.column_stack([dummies, age.to_numpy()])
    return Y, table["ms"].to_numpy(float), confounds, table["study"].to_numpy(), planted


def test_recovers_a_planted_edge_set_with_covariates_and_study_blocks():
    rng = np.random.default_rng(11)
    Y, ms, confounds, studies, planted = _block_data(rng, effect=1.0)
    res = N.nbs(Y, ms, confounds, N.EdgeGraph.complete(30), threshold=3.0, n_perm=300,
                seed=1, blocks=studies)
    sig = np.r_[False, res.p_fwe < 0.05][res.labels]
    assert sig.any()
    assert np.all(res.signs[res.p_fwe < 0.05] == -1)  # MS < HC, the planted sign
    assert sig[planted].mean() > 0.7  # most planted edges found
    assert planted[sig].mean() > 0.95  # few false edges
    assert np.all(res.t[sig] < 0)


def test_fwer_on_null_data_is_nominal():
    """FWER of 'any component with p < 0.05' over 300 null data sets (two studies, age
    covariate, permutations within study): in [0.01, 0.10]."""
    rng = np.random.default_rng(2024)
    graph = N.EdgeGraph.complete(30)
    hits = 0
    n_sim = 300
    for k in range(n_sim):
        Y, ms, confounds, studies, _ = _block_data(rng, n_per_group=(8, 7))
        res = N.nbs(Y, ms, confounds, graph, threshold=2.5, n_perm=100, seed=k,
                    blocks=studies)
        hits += bool(np.any(res.p_fwe < 0.05))
    assert 0.01 <= hits / n_sim <= 0.10


def test_intensity_statistic_and_distinct_relabellings():
    rng = np.random.default_rng(5)
    Y, ms, confounds, studies, planted = _block_data(rng, effect=1.0)
    res = N.nbs(Y, ms, confounds, N.EdgeGraph.complete(30), threshold=3.0, n_perm=100,
                seed=2, blocks=studies, statistic="intensity")
    first = res.labels == 1
    assert res.intensities[0] == pytest.approx(np.sum(np.abs(res.t[first]) - 3.0))
    assert np.array_equal(res.p_fwe, res.p_intensity)
    assert N.distinct_relabellings(np.r_[np.ones(3), np.zeros(3)]) == 20
    assert N.distinct_relabellings(np.r_[1, 1, 0, 1, 0, 0], [0, 0, 0, 1, 1, 1]) == 9


def _write_relmat(path, values, rois):
    table = pd.DataFrame(values, index=pd.Index(rois, name="roi"), columns=rois)
    table.to_csv(path, sep="\t", na_rep="n/a")
    return path


@pytest.mark.parametrize("problem, message", [
    ("shape", "expected 5 x 5"),
    ("labels", "are not the 5"),
    ("nan", "no edge has a value"),
    ("inf", "infinite"),
    ("text", "non-numeric"),
    ("asymmetric", "not symmetric"),
])
def test_bad_relmat_names_the_file(tmp_path, problem, message):
    rois = [f"ROI{k:03d}" for k in range(1, 6)]
    z = np.full((5, 5), 0.3)
    np.fill_diagonal(z, np.nan)
    names = rois
    if problem == "shape":
        z, names = z[:4, :4], rois[:4]
    elif problem == "labels":
        names = rois[::-1]
    elif problem == "nan":
        z[:] = np.nan
    elif problem == "inf":
        z[0, 1] = z[1, 0] = np.inf
    elif problem == "asymmetric":
        z[0, 1] = 0.9
    path = _write_relmat(tmp_path / "sub-01_atlas-Seitzman300_relmat.tsv", z, names)
    if problem == "text":
        path.write_text(path.read_text().replace("0.3", "oops", 1))
    with pytest.raises(MsnetInputError, match=message) as err:
        N.read_relmat(path, rois)
    assert str(path) in str(err.value)


def test_relmat_roundtrip_and_missing_edges_left_out(tmp_path):
    rois = [f"ROI{k:03d}" for k in range(1, 6)]
    rng = np.random.default_rng(0)
    z = rng.standard_normal((5, 5))
    z = (z + z.T) / 2
    np.fill_diagonal(z, np.nan)
    z[4, :] = z[:, 4] = np.nan  # an ROI without signal: its edges are n/a, not an error
    path = _write_relmat(tmp_path / "sub-01_atlas-Seitzman300_relmat.tsv", z, rois)
    edges = N.read_relmat(path, rois)
    i, j = np.triu_indices(5, 1)
    np.testing.assert_allclose(edges, z[i, j], rtol=1e-6)
    assert edges.dtype == np.float32 and np.isnan(edges).sum() == 4
