"""Reports: untrusted text stays text, nothing refers to the network, and a real browser shows them."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from evalkit.decide.effects import suite_effects
from evalkit.record import ItemRecord, Manifest, ModelRef, RunRecord, StatsRef, SuiteRef
from evalkit.report.overview import write_compare_report
from evalkit.report.run_page import render_run, write_run_report
from evalkit.settings import StatsSettings

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = "<script>alert(1)</script>"
IMG = '"><img src=x onerror=alert(1)>'
EVIL = f"{SCRIPT} and {IMG}"


def _choice(margin: float, entropy: float = 0.9) -> dict:
    return {"margin": margin, "entropy": entropy, "a_wins": int(margin > 0), "winner": 0 if margin > 0 else 1,
            "agrees": 1, "logprob_sum": [-5.0 + margin / 2, -5.0 - margin / 2], "n_tokens": [2, 2]}


def _generation(text: str, kl: float) -> dict:
    return {"generation": text, "reference_generation": "ok", "changed": int(kl > 0), "kl": kl, "nll": 1.0 + kl,
            "nll_sum": 3.0, "continuation_tokens": 3, "token_logprobs": [-1.0, -0.5, -2.0 - kl],
            "tokens": [SCRIPT, IMG, " end"], "ref_margin": 0.5 + kl}


def hostile_record(run_id: str = "evil") -> RunRecord:
    items = []
    for k in range(8):
        items.append(ItemRecord(suite="tension", kind="tension", item_id=f"t{k}", cluster=f"c{k % 3}{EVIL}",
                                prompt=f"{EVIL} prompt {k}", options=[f"give {SCRIPT}", f"keep {IMG}"],
                                reference=_choice(0.1 * k), subject=_choice(0.1 * k + (2.0 if k % 3 == 0 else -0.3))))
        items.append(ItemRecord(suite="axes", kind="novel_axis", item_id=f"a{k}", cluster=["mood", IMG][k % 2],
                                prompt=EVIL, options=[SCRIPT, IMG], reference=_choice(0.05 * k),
                                subject=_choice(0.05 * k - 1.5)))
        items.append(ItemRecord(suite="para", kind="consistency", item_id=f"p{k}", cluster=f"g{k // 2}{SCRIPT}",
                                prompt=EVIL, options=[SCRIPT, IMG], reference=_choice(1.0 + 0.1 * k),
                                subject=_choice(-1.0 if k == 3 else 1.0)))
        items.append(ItemRecord(suite="gen", kind="continuation", item_id=f"g{k}", cluster=None, prompt=EVIL,
                                options=[SCRIPT, IMG], reference=_generation(f"{EVIL} same words", 0.0),
                                subject=_generation(f"{SCRIPT} other {IMG} words", 0.2 * k)))
    settings = StatsSettings()
    ref = ModelRef(kind="base", name=f"base {SCRIPT}", path=IMG, fingerprint="f" * 64)
    sub = ModelRef(kind="adapter", name=run_id, path=f"adapters/{IMG}", fingerprint="a" * 64, scene_ids=[SCRIPT],
                   scene_title=f"Title {SCRIPT}", scene_excerpt=f"Scene text {EVIL}",
                   training={"note": SCRIPT})
    manifest = Manifest(evalkit_version="0", git_commit=IMG, created="now", packages={"x": SCRIPT}, seeds={"s": 0},
                        decoding={"d": IMG}, scoring=EVIL,
                        suites=[SuiteRef(name=n, kind=k, path=IMG, hash="h" * 64, n_items=8, normalization="sum")
                                for n, k in (("tension", "tension"), ("axes", "novel_axis"), ("para", "consistency"),
                                             ("gen", "continuation"))])
    return RunRecord(run_id=run_id, manifest=manifest, reference=ref, subject=sub,
                     stats=StatsRef(alpha=0.05, test="wilcoxon", resamples=100, seed=0, power=0.8),
                     items=items, effects=suite_effects(items, settings))


def test_untrusted_text_never_survives_unescaped(tmp_path):
    record = hostile_record()
    run_html = render_run(record)
    write_run_report(record, tmp_path / "evil" / "report.html")
    compare_html = write_compare_report([record], [tmp_path / "evil" / "report.html"], tmp_path / "index.html").read_text()
    for html in (run_html, compare_html):
        assert SCRIPT not in html and IMG not in html
        assert "<img" not in html and "onerror=alert" not in html.replace("onerror=alert(1)&gt;", "")
        assert html.count("<script>") <= 1  # only evalkit's own table sorter
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in run_html
    for section in ('id="verdicts"', 'id="tension"', 'id="forest"', 'id="consistency"', 'id="continuation"'):
        assert section in run_html


def test_reports_name_no_url(tmp_path):
    record = hostile_record()
    html = render_run(record) + write_compare_report([record], [tmp_path / "r.html"], tmp_path / "c.html").read_text()
    assert not re.search(r"https?://", html)
    assert not re.search(r"""(src|href)=["']?(//|https?:)""", html)


# --- wording -----------------------------------------------------------------------------------

def _plain_record(shared_ids: bool = True) -> RunRecord:
    """Two suites that share item ids; a one-item cluster; no seed siblings."""
    items = []
    for k in range(8):
        for suite in ("left", "right"):
            items.append(ItemRecord(suite=suite, kind="tension", item_id=f"i{k}" if shared_ids else f"{suite}{k}",
                                    cluster="lonely" if k == 0 else f"c{k % 3}", prompt=f"p{k}", options=["a", "b"],
                                    reference=_choice(0.1 * k), subject=_choice(0.1 * k + (3.0 if k == 1 else 0.01))))
    record = hostile_record()
    return record.model_copy(update={"items": items, "effects": suite_effects(items, StatsSettings()),
                                     "seed_siblings": []})


def test_items_that_moved_most_name_their_suite():
    from evalkit.report.run_page import changed_items

    lines = changed_items(_plain_record())
    assert any(line.startswith("left/i1") for line in lines) and any(line.startswith("right/i1") for line in lines)


def test_seed_noise_is_mentioned_only_where_it_was_measured():
    record = _plain_record()
    quiet = record.model_copy(update={"effects": [e.model_copy(update={"significant": False, "within_seed_noise": True,
                                                                       "seed_spread": 5.0})
                                                  for e in record.effects]})
    html = render_run(quiet)
    assert "seed noise" not in html.split('id="verdicts"')[1].split("</table>")[0]
    assert "No effect is significant." in html and "beyond seed noise" not in html


def test_an_untestable_effect_says_so():
    html = render_run(_plain_record())
    assert "untestable: 1 item: no spread to test a difference against" in html


# --- a real browser ---------------------------------------------------------------------------

CHROMIUM = "/usr/bin/chromium"


def ensure_chromium() -> str:
    """Debian's chromium, which `scripts/setup.sh --test` installs."""
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: run `bash scripts/setup.sh --test` first"
    return CHROMIUM


CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def demo_reports(tmp_path_factory) -> Path:
    """`evalkit demo --quick --discover`: the demo's own path at smoke-test size."""
    work = tmp_path_factory.mktemp("demo")
    (work / "adapters").mkdir()
    done = subprocess.run([sys.executable, "-m", "evalkit", "demo", "--quick", "--discover", "--out",
                           str(work / "reports")],
                          cwd=work, capture_output=True, text=True, env=os.environ.copy(), timeout=900)
    assert done.returncode == 0, done.stderr
    assert "open this report:" in done.stdout
    return work / "reports"


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    executable = ensure_chromium()
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield b
        b.close()


def open_page(browser, path: Path):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    started = time.perf_counter()
    page.goto(path.as_uri(), wait_until="load")
    return page, requests, time.perf_counter() - started


@pytest.mark.slow
def test_demo_reports_load_offline_and_show_the_verdicts(browser, demo_reports):
    runs = sorted(demo_reports.glob("*/report.html"))
    assert len(runs) >= 6
    for report in [demo_reports / "index.html", *runs]:
        page, requests, seconds = open_page(browser, report)
        assert [u for u in requests if not u.startswith("file://")] == [], report
        if report.name == "report.html":
            assert page.locator("#verdicts tbody tr").count() >= 8
            assert page.locator("#verdicts").is_visible()
            assert page.locator("#forest").is_visible() and page.locator("#continuation").is_visible()
            assert page.locator("#discovery").is_visible()
            rows = page.locator("table.directions tbody tr")
            assert rows.count() == 4
            assert all(rows.nth(k).inner_text().split("\t")[1].startswith(("A finding", "Not a finding"))
                       for k in range(4))
        else:
            assert page.locator("#heatmap tbody tr").count() == len(runs)
            page.locator("#heatmap a").first.click()
            page.wait_for_load_state("load")
            assert page.url.endswith("/report.html")
        page.close()


@pytest.mark.slow
def test_demo_reports_are_small(demo_reports):
    total = sum(p.stat().st_size for p in demo_reports.rglob("*.html"))
    assert total < 5 * 1024 * 1024


@pytest.mark.slow
def test_compare_links_named_by_hostile_folders_run_no_script(browser, tmp_path):
    """Run folders named `javascript:...` and `"><img onerror>` become quoted relative links: clicking
    them runs no script, opens no dialog, and leaves the file:// page for no other scheme."""
    names = ["javascript:alert(document.domain)", '"><img src=x onerror=alert(1)>']
    records, reports = [], []
    for name in names:
        folder = tmp_path / "runs" / name
        record = hostile_record(name)
        write_run_report(record, folder / "report.html")
        records.append(record)
        reports.append(folder / "report.html")
    index = write_compare_report(records, reports, tmp_path / "compare.html")
    html = index.read_text()
    assert 'href="javascript' not in html and "<img src=x" not in html
    page = browser.new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto(index.as_uri(), wait_until="load")
    links = page.locator("#heatmap a")
    assert links.count() == 2
    for k in range(2):
        page.goto(index.as_uri(), wait_until="load")
        page.locator("#heatmap a").nth(k).click()
        page.wait_for_load_state("load")
        assert page.url.startswith("file://") and page.url.endswith("/report.html"), page.url
    assert dialogs == []
    page.close()


def test_compare_over_a_folder_skips_interrupted_runs(tmp_path):
    """An interrupted run leaves its '.NAME.<8 chars>.tmp' folder (a results.json in it, no report):
    compare over the reports folder shows the finished runs only, a run of an adapter named
    '.exp1' among them."""
    from evalkit.pipelines.reports import compare
    from evalkit.record import write_record

    for name in ("honesty", ".exp1", ".honesty.x1y2_3z4.tmp"):
        write_record(hostile_record(name), tmp_path / "reports" / name / "results.json")
    page = compare([tmp_path / "reports"], tmp_path / "compare.html").read_text()
    assert "honesty/report.html" in page and ".exp1/report.html" in page and ".tmp" not in page
