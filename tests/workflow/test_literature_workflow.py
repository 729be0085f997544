"""Literature mode through Snakemake on the bundled example tables (README, "Published studies
only"): the run ends with its results and a report whose numbers are those of the result files.

The example config on a coarser grid with fewer Monte-Carlo iterations and permutations, so
that the whole run takes about a minute; the statistics themselves are checked in
``tests/unit/test_literature.py`` and ``test_literature_recovery.py``.
"""

import html
import re
import subprocess

import pandas as pd
import pytest
import yaml

from msnet import ANALYSIS_NETWORKS
from msnet.literature import literature_outputs, read_literature_studies, read_peaks

from conftest import REPO, snakemake_workdir

pytestmark = [pytest.mark.slow, pytest.mark.workflow]

EXAMPLE = REPO / "examples" / "literature"


@pytest.fixture(scope="module")
def literature_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("literature_workflow")
    config = yaml.safe_load((EXAMPLE / "config.yaml").read_text())
    config["results_dir"] = str(workdir / "results")
    config["literature"].update(peaks_tsv=str(EXAMPLE / "peaks.tsv"),
                                studies_tsv=str(EXAMPLE / "studies.tsv"),
                                resolution_mm=8, n_iters=100, n_permutations=50)
    command = snakemake_workdir(workdir, config)
    proc = subprocess.run([*command, "--cores", "2"], cwd=workdir, capture_output=True,
                          text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-5000:]
    return {"results": workdir / "results", "config": config,
            "console": proc.stdout + proc.stderr}


def _cells(html_text: str, row_key: str) -> list:
    """The cells of the first table row whose first cell is ``row_key``."""
    row = re.search(r"<tr><td class=\"key\">" + re.escape(row_key) + r"</td>(.*?)</tr>",
                    html_text)
    assert row, f"no table row for {row_key!r}"
    return [re.sub(r"<[^>]+>", "", c) for c in re.findall(r"<td[^>]*>(.*?)</td>",
                                                           row.group(1))]


def test_results_report_and_citations_are_written(literature_run):
    results = literature_run["results"]
    out = literature_outputs(results / "literature", ANALYSIS_NETWORKS,
                             "MNI152NLin2009cAsym", hybrid=False, comparison=False, masks=True)
    maps = [p for net in out["maps"].values() for stats in net.values() for p in stats.values()]
    missing = [p for p in maps + [out["metaregression"], out["methods"]]
               if not (results / p).exists()]
    assert not missing, missing
    html_text = (results / "report.html").read_text()
    for title in ("Studies and peaks", "Coordinate-based meta-analysis", "Meta-regression",
                  "Methods"):
        assert f">{title}</h2>" in html_text
    assert "Dataset &amp; QC overview" not in html_text  # no image-stage section
    assert html_text.count("data:image/svg+xml;base64,") == len(ANALYSIS_NETWORKS)
    assert f"Report: {(results / 'report.html').resolve()}" in literature_run["console"]
    bib = (results / "citations.bib").read_text()
    assert all(key in bib for key in ("eickhoff2012", "wager2007", "radua2012", "salo2023"))


def test_report_numbers_are_those_of_the_tables(literature_run):
    """Every study's peak counts equal the peaks table's; every method's significant-cluster
    count equals its cluster table's; the methods text is the one literature mode wrote."""
    results = literature_run["results"]
    html_text = (results / "report.html").read_text()
    studies = read_literature_studies(EXAMPLE / "studies.tsv")
    peaks = read_peaks(EXAMPLE / "peaks.tsv", studies, EXAMPLE / "studies.tsv")
    header = re.findall(r"<th[^>]*>(.*?)</th>",
                        html_text.split('id="literature-studies"')[1].split("</thead>")[0])
    for study in studies["study_id"]:
        cells = dict(zip(header[1:], _cells(html_text, study)))
        assert cells["n MS"] == str(studies.loc[study, "n_ms"])
        mine = peaks[peaks["study_id"] == study]
        for (net, direction), n in mine.groupby(["network", "direction"]).size().items():
            assert cells[f"{net} {direction}".replace(">", "&gt;").replace("<", "&lt;")] == str(n)

    methods = (results / "literature" / "literature_desc-methods.txt").read_text()
    assert html.escape(methods.split("\n\n")[0]) in html_text
    section = html_text.split('id="literature"')[1].split('id="literature-metaregression"')[0]
    for net in ANALYSIS_NETWORKS:
        part = section.split(f"<h3>{net}</h3>")[1].split("<h3>")[0]
        sdm = pd.read_csv(results / "literature"
                          / f"literature_network-{net}_method-sdm_clusters.tsv", sep="\t")
        n_sig = int((sdm["significant"].astype(str).str.lower().isin(["true", "1"])
                     | (pd.to_numeric(sdm["peak_p_fwe"], errors="coerce") < 0.05)).sum())
        assert _cells(part, "SDM-style (peaks only)")[0] == str(n_sig), net
