"""The report as a reader sees it: headless Chromium opens the HTML that the tiny Snakemake
run wrote (the shared ``tiny_workflow`` fixture) and checks that every section renders,
every figure loads, no table hides rows or pushes its key columns out of a 1,400-px window,
and the page logs no error.

Chromium is the Debian package ``chromium`` (``apt-get install chromium``; ``.ci/run``
installs it). Without it the test skips, saying so; with ``MSNET_REQUIRE_CHROMIUM=1`` (set
by ``.ci/run`` once Chromium is installed) a missing Chromium fails the test instead.

How: a copy of the report gets a small script that records load errors (capturing ``error``
events, so a broken image counts) and ``console.error`` calls, and on ``load`` writes what
it measured into the page as JSON; ``chromium --headless --dump-dom`` prints the DOM after
the page has loaded, and ``--enable-logging=stderr`` shows any console message Chromium
logged itself. No browser-automation package is needed.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from msnet.report import SECTIONS

pytestmark = [pytest.mark.workflow, pytest.mark.slow]  # the tiny run takes minutes

WINDOW = (1400, 1000)
"""Browser window (px): the report must show its tables' key columns at this width."""

KEY_COLUMNS = 3
"""Leading columns of every table that must be visible without scrolling sideways."""

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

PROBE = """<script>
(function () {
  var errors = [];
  window.addEventListener('error', function (e) {
    var t = e.target;
    errors.push(t && t !== window && t.tagName
      ? 'failed to load <' + t.tagName.toLowerCase() + '> ' + String(t.src || t.href || '').slice(0, 60)
      : 'script error: ' + e.message);
  }, true);
  var consoleError = console.error;
  console.error = function () {
    errors.push('console.error: ' + Array.prototype.join.call(arguments, ' '));
    return consoleError.apply(console, arguments);
  };
  window.addEventListener('load', function () {
    var width = document.documentElement.clientWidth;
    var result = {
      width: width,
      errors: errors,
      sections: Array.prototype.map.call(document.querySelectorAll('section'), function (s) {
        var h = s.querySelector('h2');
        return {id: h ? h.id : null, height: s.getBoundingClientRect().height,
                chars: s.innerText.length};
      }),
      images: Array.prototype.map.call(document.images, function (i) {
        return {complete: i.complete, naturalWidth: i.naturalWidth,
                shownWidth: i.getBoundingClientRect().width, alt: i.alt.slice(0, 60)};
      }),
      inlineSvgs: document.querySelectorAll('svg').length,
      tables: Array.prototype.filter.call(document.querySelectorAll('table'), function (t) {
        return t.offsetParent !== null;  // not inside a closed <details>
      }).map(function (t) {
        var box = t.parentElement, heads = t.querySelectorAll('thead tr:last-child th');
        var key = heads[Math.min(heads.length, %(key)d) - 1];
        return {head: heads.length ? heads[0].innerText : '',
                rows: t.querySelectorAll('tbody tr').length,
                boxScrollHeight: box.scrollHeight, boxClientHeight: box.clientHeight,
                keyRight: key ? key.getBoundingClientRect().right : 0};
      })
    };
    var pre = document.createElement('pre');
    pre.id = 'msnet-browser-check';
    pre.textContent = JSON.stringify(result);
    document.body.appendChild(pre);
  });
})();
</script>""" % {"key": KEY_COLUMNS}


def find_chromium() -> str | None:
    """Path of a Chromium (or Chrome) executable, or None."""
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.fixture(scope="module")
def chromium():
    path = find_chromium()
    if path is None:
        message = ("headless Chromium not found (tried: " + ", ".join(CHROMIUM_NAMES) + "); "
                   "install it with `apt-get install chromium` to run the report's browser test")
        if os.environ.get("MSNET_REQUIRE_CHROMIUM") == "1":
            pytest.fail(f"MSNET_REQUIRE_CHROMIUM=1 but {message}")
        pytest.skip(message)
    return path


def open_in_browser(chromium: str, report: Path, workdir: Path) -> tuple[dict, str]:
    """Load a probed copy of ``report`` in headless Chromium.

    Returns
    -------
    (dict, str)
        What the probe measured (see :data:`PROBE`) and Chromium's stderr.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    page = workdir / "report_probed.html"
    text = report.read_text(encoding="utf-8")
    page.write_text(text.replace("<head>", "<head>" + PROBE, 1), encoding="utf-8")
    command = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
               "--disable-extensions", "--hide-scrollbars", f"--user-data-dir={workdir / 'profile'}",
               f"--window-size={WINDOW[0]},{WINDOW[1]}", "--virtual-time-budget=20000",
               "--enable-logging=stderr", "--v=0", "--dump-dom", page.as_uri()]
    proc = subprocess.run(["nice", "-n", "19", *command], capture_output=True, text=True,
                          timeout=300)
    found = re.search(r'<pre id="msnet-browser-check">(.*?)</pre>', proc.stdout, flags=re.S)
    assert found, (f"the page's load event never ran (chromium exit {proc.returncode}):\n"
                   f"{proc.stderr[-3000:]}")
    return json.loads(html.unescape(found.group(1))), proc.stderr


def check_report(result: dict, stderr: str) -> None:
    """Every assertion of the browser test, on what :func:`open_in_browser` measured."""
    assert result["errors"] == []
    console = [line for line in stderr.splitlines()
               if "CONSOLE" in line or "Uncaught" in line]
    assert console == [], console
    assert result["width"] >= WINDOW[0] - 20
    rendered = {s["id"]: s for s in result["sections"]}
    for sid, title in SECTIONS:
        assert sid in rendered, f"section {title!r} missing"
        assert rendered[sid]["height"] > 40 and rendered[sid]["chars"] > 40, (title, rendered[sid])
    assert result["images"], "the report has no figure"
    for image in result["images"]:
        assert image["complete"] and image["naturalWidth"] > 0, image  # decoded, not broken
        assert image["shownWidth"] > 0, image
    for table in result["tables"]:
        # no scroll box hides rows; the first columns fit in the window
        assert table["boxScrollHeight"] <= table["boxClientHeight"] + 2, table
        assert table["keyRight"] <= result["width"], table


def test_report_renders_in_headless_chromium(tiny_workflow, chromium, tmp_path):
    assert tiny_workflow["proc"].returncode == 0, tiny_workflow["proc"].stderr[-3000:]
    report = tiny_workflow["results"] / "report.html"
    # moved alone, the page must still be whole: open a copy in a folder of its own
    alone = tmp_path / "moved" / "report.html"
    alone.parent.mkdir()
    shutil.copy(report, alone)
    result, stderr = open_in_browser(chromium, alone, tmp_path / "browser")
    check_report(result, stderr)
    assert len(result["images"]) >= 10  # QC, study effects, forest/funnel/bubble, brains


def test_run_ends_with_a_summary_and_no_leaked_library_warnings(tiny_workflow):
    proc = tiny_workflow["proc"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    console = proc.stdout + proc.stderr
    summary = console[console.index("msnet: run complete."):]
    assert f"Report: {(tiny_workflow['results'] / 'report.html').resolve()}" in summary
    assert re.search(r"Subjects: \d+ in 3 studies; \d+ included \(\d+ MS, \d+ HC\), \d+ "
                     r"excluded by QC", summary)
    assert "Warnings: " in summary
    # a library RuntimeWarning must be caught where it arises (and said in the output
    # tables), not leak into the logs as py.warnings
    logs = tiny_workflow["results"] / "logs"
    leaked = [f"{log}: {line}" for log in logs.rglob("*.log")
              for line in log.read_text(errors="replace").splitlines()
              if "RuntimeWarning" in line or re.search(r" WARNING (?!msnet\.)\S+: ", line)]
    assert leaked == []  # nor a library's own WARNING (NiMARE's, nilearn's...)
