"""The report in a real headless Chromium, opened from disk: no network request, every image decodes, and its
Content-Security-Policy (script hashes, no 'unsafe-inline') lets its own script run: no violation logged."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from test_report import grid_store

from ablation.report.build import build_report

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--no-first-run", "--disable-sync"]

pytestmark = pytest.mark.browser
# the sample grid as laid out: rows, header cells, its width and the content width of its container
GRID_JS = """t => { const box = getComputedStyle(t.parentElement);
  return [t.tBodies[0].rows.length, t.tHead.rows[0].cells.length, t.getBoundingClientRect().width,
          t.parentElement.clientWidth - parseFloat(box.paddingLeft) - parseFloat(box.paddingRight)]; }"""


@pytest.fixture(scope="module")
def report_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("browser")
    tracker, study = grid_store(tmp)
    return build_report(study.spec.name, tracker, f"sqlite:///{tmp / 'optuna.db'}", tmp / "reports", study)


def test_report_renders_offline(report_path: Path, tmp_path: Path) -> None:
    if not Path(CHROMIUM).exists() and shutil.which("chromium") is None:
        pytest.skip(f"headless Chromium not found at {CHROMIUM} (apt-get install -y chromium); CI installs it")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    requests: list[str] = []
    console: list[str] = []  # errors and warnings: Chromium logs each CSP violation ("Refused to execute ...") here
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium"),
                                     args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("request", lambda request: requests.append(request.url))
            page.on("console", lambda msg: console.append(msg.text) if msg.type in ("error", "warning") else None)
            page.on("pageerror", lambda error: console.append(str(error)))
            page.goto(report_path.as_uri(), wait_until="load")
            page.wait_for_function("Array.from(document.images).every(img => img.complete)")
            widths = page.eval_on_selector_all("img", "imgs => imgs.map(img => [img.alt, img.naturalWidth])")
            grid = page.eval_on_selector("#sample-grid", GRID_JS)
            header = page.locator("#trial-table th").nth(1)  # seed column: sorting must not break the page
            header.click()
            header.click()
            seeds = page.eval_on_selector_all("#trial-table tbody tr", "rows => rows.map(r => r.cells[1].textContent)")
            shot = tmp_path / "report.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert not [url for url in requests if url.startswith(("http://", "https://"))], requests
    assert widths and all(width > 0 for _, width in widths), [alt for alt, width in widths if width == 0]
    assert seeds == sorted(seeds, reverse=True)  # second click: descending
    assert grid[:2] == [8, 4]  # a row per cell and seed; label, 2 photos, the GIF
    assert grid[2] >= 0.99 * grid[3]  # the grid fills the width it has
    assert not [m for m in console if "Content Security Policy" in m or "Refused to" in m], console
    data = shot.read_bytes()
    assert data.startswith(b"\x89PNG") and len(data) > 50_000
