"""The report's Content-Security-Policy allows exactly its own inline scripts, by hash, not 'unsafe-inline': a
script that got into the page any other way (an escaping bug) would not run."""

from __future__ import annotations

import base64
import hashlib
from html.parser import HTMLParser

import pytest
from test_report import grid_store

from ablation.report.build import build_report


class Page(HTMLParser):
    """The CSP meta tag's content and the text of every inline <script>, exactly as the browser sees them."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.csp: list[str] = []
        self.scripts: list[str] = []
        self.script: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "meta" and (values.get("http-equiv") or "").lower() == "content-security-policy":
            self.csp.append(values.get("content") or "")
        elif tag == "script":
            assert "src" not in values, "the page is self-contained: no external script"
            self.script = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "script" and self.script is not None:
            self.scripts.append("".join(self.script))
            self.script = None

    def handle_data(self, data: str) -> None:
        if self.script is not None:
            self.script.append(data)


def directives(policy: str) -> dict[str, list[str]]:
    parts = (d.split() for d in policy.split(";") if d.strip())
    return {words[0].lower(): words[1:] for words in parts}


def sha256_source(script: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode() + "'"


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Page:
    tmp = tmp_path_factory.mktemp("csp")
    tracker, study = grid_store(tmp)
    out = build_report(study.spec.name, tracker, f"sqlite:///{tmp / 'optuna.db'}", tmp / "reports", study)
    parsed = Page()
    parsed.feed(out.read_text(encoding="utf-8"))
    parsed.close()
    return parsed


def test_script_src_lists_the_hash_of_each_inline_script_and_no_unsafe_inline(page: Page) -> None:
    assert len(page.csp) == 1
    policy = directives(page.csp[0])
    assert policy["default-src"] == ["'none'"]
    assert "'unsafe-inline'" not in policy["script-src"]
    assert page.scripts  # the sortable tables need one
    assert sorted(policy["script-src"]) == sorted({sha256_source(s) for s in page.scripts})

