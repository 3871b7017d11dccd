"""The README a newcomer reads: short enough for five minutes, every link into the tree
leads somewhere, the two commands CI runs are in it, and the markers `python3 dev.py
bench` rewrites between are where bench/summary.py looks for them.

(Its example runs as written: tests/integration/cli/test_readme.py. README.md is also
the package's description, where a relative link would lead nowhere: the build rewrites
those links, and tests/integration/cli/test_wheel.py checks the built description.)
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
MAX_WORDS = 2_000

_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HTML_LINK = re.compile(r"""(?:href|src)\s*=\s*["']([^"']+)["']""")
_CODE = re.compile(r"```.*?```|`[^`\n]*`", re.DOTALL)


def _links(markdown: str) -> list[str]:
    """Every link and image target of ``markdown``, outside code."""
    text = _CODE.sub("", markdown)
    return _LINK.findall(text) + _HTML_LINK.findall(text)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading (mkdocs' toc agrees for the headings linked here)."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", text))


def _anchors(path: Path) -> set[str]:
    text = _CODE.sub("", path.read_text())
    return {_slug(m) for m in re.findall(r"(?m)^#{1,6}\s+(.+?)\s*#*$", text)}


def _bench_summary() -> ModuleType:
    """bench/summary.py, which is a script's module, not part of the package."""
    spec = importlib.util.spec_from_file_location("bench_summary", ROOT / "bench" / "summary.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_readme_is_at_most_2000_words() -> None:
    """Counted as whitespace-separated words over the whole file, code and tables too."""
    words = len(README.read_text().split())
    assert words <= MAX_WORDS, f"README.md has {words} words; at most {MAX_WORDS}"


def test_every_relative_link_of_the_readme_resolves_to_a_file_and_heading() -> None:
    links = _links(README.read_text())
    assert links
    for target in links:
        parts = urlsplit(target)
        if parts.scheme or parts.netloc:
            continue
        path = ROOT / parts.path.removeprefix("./") if parts.path else README
        assert path.exists(), f"README links {target}, but {path.relative_to(ROOT)} is missing"
        if parts.fragment:
            assert path.suffix == ".md", f"README links {target}: an anchor in a non-page"
            assert parts.fragment in _anchors(path), f"README links {target}: no such heading"


def test_the_anchor_check_tells_a_missing_heading() -> None:
    """The check above can fail: a heading renamed leaves its anchor unknown."""
    anchors = _anchors(ROOT / "docs" / "testing.md")
    assert "a-local-postgresql-with-compose" in anchors
    assert "a-local-postgres-with-compose" not in anchors


def test_the_two_commands_stand_in_the_readme_exactly() -> None:
    text = README.read_text()
    for command in ("python3 dev.py demo", "python3 dev.py test"):
        assert re.search(rf"(?m)^{re.escape(command)}\b", text), command


def test_the_benchmark_markers_stand_once_where_bench_run_writes() -> None:
    """`python3 dev.py bench` splits these files at the markers: each must be there once,
    begin before end, or the run fails after minutes of measuring."""
    summary = _bench_summary()
    for path, (begin, end) in (
        (summary.README, summary.COMPARISON),
        (summary.DOC, summary.SUMMARY),
    ):
        text = Path(path).read_text()
        assert text.count(begin) == 1, path
        assert text.count(end) == 1, path
        assert text.index(begin) < text.index(end), path


def test_the_readme_names_the_install_that_works_before_the_first_release() -> None:
    """Not on the package index yet: a clone's path installs it; the released form is
    named as what changes, never as the way to install today."""
    text = README.read_text()
    assert "pip install -e '.[embedded]'" in text
    assert "not on the package index yet" in text
    for paragraph in text.split("\n\n"):
        if re.search(r"pip install ['\"]sessionstore\[", paragraph):
            assert "first release" in paragraph, paragraph
