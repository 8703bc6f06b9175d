"""report.html in real headless Chromium: it renders, every figure loads, nothing leaves the file, and a
hostile model name shows as text.

How: a copy of the report gets a small probe script at the top of <head> (the report's own CSP allows
inline scripts and nothing else). The probe records Content-Security-Policy violations (any fetch of a
non-data: URL is one), the Resource Timing entries (data: images make none), each <img>'s load state,
and calls to alert(); after the load event it writes them into the DOM, which ``--dump-dom`` prints.
The same Chromium run takes the screenshot. A control page with two network images checks that the
probe does see a request when there is one (a probe that sees nothing proves nothing).

Chromium is Debian's ``chromium`` package (``apt-get install -y chromium``; .ci/run installs it).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from planner.cluster_spec import CLUSTER_PRESETS
from planner.cost import CostModel
from planner.model_presets import PRESETS
from planner.parallel_config import ParallelConfig
from planner.plan import Plan
from planner.report import Rejected, write_report

XSS = "<script>alert(1)</script>"
CHROMIUM_TIMEOUT_S = 90
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-extensions", "--mute-audio",
         "--virtual-time-budget=5000"]
PROBE = """<script>
(function () {
  var seen = {violations: [], alerts: 0};
  document.addEventListener('securitypolicyviolation', function (e) {
    seen.violations.push(e.violatedDirective + ' ' + e.blockedURI);
  });
  window.alert = function () { seen.alerts += 1; };
  window.addEventListener('load', function () { setTimeout(function () {
    var out = document.createElement('pre');
    out.id = 'probe-result';
    out.textContent = JSON.stringify({
      images: Array.prototype.map.call(document.images, function (i) {
        return {complete: i.complete, width: i.naturalWidth, height: i.naturalHeight, src: i.src.slice(0, 30)};
      }),
      resources: performance.getEntriesByType('resource').map(function (r) { return r.name; }),
      violations: seen.violations, alerts: seen.alerts,
      sections: Array.prototype.map.call(document.querySelectorAll('section'), function (s) { return s.id; }),
      text: document.body.innerText
    });
    document.body.appendChild(out);
  }, 0); });
})();
</script>"""


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.fail("Chromium not found: install Debian's package (apt-get install -y chromium); .ci/run does this")


def run_chromium(url: str, tmp: Path, *extra: str) -> str:
    """Run headless Chromium on ``url`` with a fresh profile; returns the dumped DOM. Kills its whole process
    group on timeout (Chromium forks renderers and helpers)."""
    profile = tmp / f"profile-{len(list(tmp.glob('profile-*')))}"
    cmd = [chromium(), *FLAGS, f"--user-data-dir={profile}", *extra, "--dump-dom", url]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=CHROMIUM_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"chromium did not finish in {CHROMIUM_TIMEOUT_S} s on {url}")
    assert proc.returncode == 0, f"chromium exited {proc.returncode}: {err[-2000:]}"
    return out


def probe_result(dom: str) -> dict:
    m = re.search(r'<pre id="probe-result">(.*?)</pre>', dom, re.S)
    assert m, "probe did not run (no result in the dumped DOM)"
    import html

    return json.loads(html.unescape(m.group(1)))


def with_probe(page: str) -> str:
    """Insert the probe right after the CSP meta, before anything that could fetch."""
    csp_end = page.index(">", page.index('http-equiv="Content-Security-Policy"')) + 1
    return page[:csp_end] + PROBE + page[csp_end:]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("browser")
    model = PRESETS["llama3.1-8b"].replace(name=XSS)
    cluster = CLUSTER_PRESETS["dgx-h100"].with_world(gpus=16)
    cm = CostModel(model, cluster)
    cfgs = [ParallelConfig(dp=16 // (tp * pp), tp=tp, pp=pp, micro_batch_size=1, global_batch_size=64, seq_len=8192,
                           sequence_parallel=tp > 1, recompute="selective")
            for tp, pp in ((2, 2), (4, 2), (2, 4), (1, 2))]
    ests = sorted((cm.estimate(c) for c in cfgs), key=lambda e: e.step_time_s)
    ok = [e for e in ests if e.fits]
    plan = Plan.build(model, cluster, ok[0].config)
    out = tmp / "run"
    write_report(out, plan=plan, ranked=ok, cost_model=cm, command=f"python -m planner search --model '{XSS}'",
                 rejected=[Rejected(f"{XSS}_tp9", "made up for the test: <img src=x onerror=alert(2)>")])
    page = (out / "report.html").read_text()
    (out / "probed.html").write_text(with_probe(page))
    shot = tmp / "shot.png"
    dom = run_chromium((out / "probed.html").as_uri(), tmp, "--window-size=1280,2400", f"--screenshot={shot}")
    return page, probe_result(dom), shot, tmp


def test_every_figure_loads(rendered) -> None:
    page, result, _, _ = rendered
    images = result["images"]
    assert len(images) >= 5 and len(images) == page.count("<img ")
    for img in images:
        assert img["complete"] and img["width"] > 100 and img["height"] > 100, img
        assert img["src"].startswith("data:image/png")
    assert result["sections"] == ["answer", "why", "candidates", "plots", "partition", "inputs"]


def test_no_request_leaves_the_file(rendered) -> None:
    page, result, _, _ = rendered
    assert result["violations"] == []
    assert result["resources"] == []  # data: images make no Resource Timing entry; any fetch would
    assert not re.search(r"https?://", page)


def test_user_strings_show_as_text(rendered) -> None:
    _, result, _, _ = rendered
    assert result["alerts"] == 0
    assert XSS in result["text"]  # rendered as the literal characters
    assert "<img src=x onerror=alert(2)>" in result["text"]


def test_screenshot_is_not_blank(rendered) -> None:
    from matplotlib.image import imread

    _, _, shot, _ = rendered
    px = imread(shot)[..., :3]
    assert px.shape[0] >= 2000 and px.shape[1] >= 1200
    non_white = (px < 0.95).any(axis=-1).mean()
    colours = len({tuple(c) for c in (px[::7, ::7] * 255).astype(int).reshape(-1, 3)})
    assert non_white > 0.03, f"only {non_white:.1%} of the screenshot is not white"
    assert colours > 20 and px.std() > 0.05


def test_probe_sees_a_request_when_there_is_one(rendered) -> None:
    page, _, _, tmp = rendered
    head = page[:page.index("<style>")]
    control = tmp / "control.html"
    control.write_text(with_probe(head + '</head><body><img src="http://127.0.0.1:9/a.png"></body></html>'))
    result = probe_result(run_chromium(control.as_uri(), tmp))
    assert any("http://127.0.0.1:9/a.png" in v for v in result["violations"])
    assert result["images"][0]["width"] == 0
