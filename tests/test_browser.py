"""report.html in a real browser: headless Chromium opens the page of an evaluated run at
1280 and 390 px wide and reports, from inside the page, whether every image decoded,
which sections are there, and how wide the document is against the viewport (nothing may
overflow horizontally). .ci/run installs Chromium from the OS packages and sets
AGEREG_REQUIRE_BROWSER=1, so there a missing browser fails instead of skipping."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests_helpers import run

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome")
SECTIONS = ("Dataset", "Best trial", "Ranking", "Test-set evaluations", "Config")

PROBE = """<!DOCTYPE html><html><body style="margin:0">
<iframe id="f" src="report.html" style="width:{width}px;height:900px;border:0"></iframe>
<script>
document.getElementById('f').addEventListener('load', function () {{
  var d = this.contentDocument, w = this.contentWindow;
  var imgs = Array.from(d.images);
  var broken = imgs.filter(function (i) {{ return !(i.complete && i.naturalWidth > 0); }});
  var r = {{images: imgs.length, broken: broken.length,
           width: d.documentElement.scrollWidth, viewport: w.innerWidth,
           h2: Array.from(d.querySelectorAll('h2')).map(function (h) {{
             return h.textContent; }})}};
  var pre = document.createElement('pre'); pre.id = 'agereg-probe';
  pre.textContent = JSON.stringify(r); document.body.appendChild(pre);
}});
</script></body></html>
"""


def browser() -> str:
    found = next((b for b in map(shutil.which, BROWSERS) if b), None)
    if found is None:
        if os.environ.get("AGEREG_REQUIRE_BROWSER"):
            pytest.fail("AGEREG_REQUIRE_BROWSER is set but no Chromium is installed")
        pytest.skip("no Chromium here (.ci/run installs it): the page was not opened")
    return found


def open_page(exe: str, folder: Path, width: int) -> dict:
    (folder / "probe.html").write_text(PROBE.format(width=width))
    profile = tempfile.mkdtemp(prefix="agereg-chromium-")
    try:
        dom = subprocess.run(
            [exe, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--allow-file-access-from-files", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}",
             f"--window-size={width + 100},1000", "--virtual-time-budget=10000",
             "--dump-dom", (folder / "probe.html").as_uri()],
            capture_output=True, text=True, timeout=120, check=False).stdout
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    m = re.search(r'<pre id="agereg-probe">([^<]*)</pre>', dom)
    assert m, f"the page did not report back (Chromium printed {len(dom)} characters)"
    return json.loads(m.group(1).replace("&quot;", '"').replace("&amp;", "&"))


@pytest.mark.slow
def test_report_in_a_real_browser_at_1280_and_390_px(tiny_config: Path, tmp_path: Path):
    exe = browser()
    runs = tmp_path / "runs"
    code, _, err = run(["search", str(tiny_config), "--runs-dir", str(runs), "--quiet"])
    assert code == 0, err
    code, _, err = run(["eval", "--runs-dir", str(runs), "--bootstrap", "100"])
    assert code == 0, err
    code, _, err = run(["report", "--runs-dir", str(runs)])
    assert code == 0, err
    page_dir = tmp_path / "page"
    page_dir.mkdir()
    run_dir = runs / os.readlink(runs / "latest")
    shutil.copy(run_dir / "report.html", page_dir / "report.html")
    for width in (1280, 390):
        r = open_page(exe, page_dir, width)
        assert r["viewport"] == width, r
        assert r["images"] == 2 + 6 and r["broken"] == 0, r  # grid pictures + one eval's
        assert r["width"] <= r["viewport"], f"the page overflows at {width} px: {r}"
        for section in SECTIONS:
            assert any(h.startswith(section) for h in r["h2"]), (section, r["h2"])
