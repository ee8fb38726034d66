"""The report opened in a real headless browser (Debian's chromium driven by playwright).

Skipped, with the reason, where playwright or a chromium binary is missing: `make
browser` installs Debian's chromium, `pip install -e '.[test]'` installs playwright
(which is told to use that chromium: nothing is downloaded).
"""

from __future__ import annotations

import os
import shutil

import duckdb
import pytest

from datamix.report import SECTIONS

CHART_SECTIONS = ("pipeline", "lengths", "scores", "dedup", "mix", "shards", "training", "cost")

pytestmark = pytest.mark.slow  # one real pipeline run (about a minute on 2 cores), shared by the report tests


def chromium() -> str | None:
    for name in (os.environ.get("DATAMIX_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and (path := shutil.which(name)):
            return path
    return None


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[test]')")
    binary = chromium()
    if binary is None:
        pytest.skip("no chromium on this machine (make browser installs Debian's chromium)")
    with sync_api.sync_playwright() as p:
        try:
            b = p.chromium.launch(executable_path=binary, args=["--no-sandbox"])
        except Exception as e:  # a binary playwright cannot drive
            pytest.skip(f"cannot start {binary} headless: {str(e).splitlines()[0]}")
        yield b
        b.close()


def test_the_report_in_a_headless_browser(report_run, browser):
    folder, store, _ = report_run
    page_file = folder / "report.html"
    url = page_file.resolve().as_uri()
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    console, errors, requests = [], [], []
    page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("request", lambda r: requests.append(r.url))
    page.goto(url, wait_until="load")

    assert [c for c in console if c.startswith("error")] == [] and errors == []
    assert requests == [url]  # the page itself, nothing else: no network at view time

    for key in SECTIONS:
        section = page.locator(f'section[data-section="{key}"]')
        assert section.count() == 1 and section.is_visible(), key
    for key in CHART_SECTIONS:  # every chart drawn, with a size and shapes in it
        charts = page.locator(f'section[data-section="{key}"] svg.chart')
        assert charts.count() >= 1, key
        for i in range(charts.count()):
            chart = charts.nth(i)
            box = chart.bounding_box()
            assert box and box["width"] > 50 and box["height"] > 20, (key, i)
            assert chart.locator("rect, path, circle").count() >= 1, (key, i)
    assert "no evaluation in this store" in page.locator('section[data-section="evaluation"]').inner_text()

    # the numbers a reader sees equal the store's
    con = duckdb.connect(str(store), read_only=True)
    steps = con.execute("SELECT name, rows_in, rows_out FROM dm.steps").fetchall()
    comp = con.execute("SELECT source, samples, tokens FROM dm.composition('mix')").fetchall()
    con.close()
    for name, rows_in, rows_out in steps:
        if name == "report":
            continue  # the page was written while its own step ran
        cells = page.locator(f'tr[data-step="{name}"][data-rows-in] td').all_inner_texts()
        assert cells[0] == name and cells[3] == f"{rows_in:,}" and cells[4] == f"{rows_out:,}", cells
    for source, samples, tokens in comp:
        cells = page.locator(f'tr[data-source="{source}"] td').all_inner_texts()
        assert cells[0] == source and cells[2] == f"{samples:,}" and cells[4] == f"{tokens:,}", cells
    # a drop reason links to its examples, shown as chats
    page.locator('a[href^="#drop-clean-"]').first.click()
    examples = page.locator('details[id^="drop-clean-"]')
    examples.locator("summary").click()
    assert examples.locator(".chat .msg.user").count() >= 1
    page.close()
