"""The docs site's page list and compose.yaml's images and ports (the README's links:
tests/unit/test_readme.py)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
COMPOSE = ROOT / "compose.yaml"


def test_the_docs_site_lists_every_page_and_only_pages_that_exist() -> None:
    config = (ROOT / "mkdocs.yml").read_text()
    nav = config.split("\nnav:\n", 1)[1].split("\n\n", 1)[0]
    listed = set(re.findall(r"(?m)^\s+-\s+(?:[^:\n]+:\s+)?(\S+\.md)\s*$", nav))
    pages = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")}
    assert pages - listed == set(), "pages missing from mkdocs.yml's nav"
    assert listed - pages == set(), "mkdocs.yml's nav names pages that do not exist"


# --- compose.yaml -------------------------------------------------------------------------

# The Supabase CLI's local stack (supabase/config.toml's defaults: shadow database 54320,
# API 54321, database 54322, Studio 54323, Inbucket 54324-54326, analytics 54327, pooler
# 54329), a local PostgreSQL and PgBouncer, and Supabase's transaction pooler port.
TAKEN_PORTS = {*range(54320, 54330), 5432, 6432, 6543}


def _images() -> list[str]:
    return re.findall(r"(?m)^\s*image:\s*[\"']?([^\s\"'#]+)", COMPOSE.read_text())


def _host_ports() -> list[int]:
    mappings = re.findall(r"(?m)^\s*-\s*[\"']?(?:[\d.]+:)?(\d+):\d+[\"']?\s*$", COMPOSE.read_text())
    return [int(port) for port in mappings]


def test_compose_images_are_pinned_to_exact_versions() -> None:
    images = _images()
    assert len(images) == 2
    for image in images:
        name, _, tag = image.rpartition(":")
        assert name, f"{image}: no tag"
        assert "/" not in tag, f"{image}: no tag"
        assert tag != "latest", f"{image}: pin a version, not latest"
        assert re.fullmatch(r"v?\d+\.\d+(\.\d+)?([-.][\w.-]+)?", tag), f"{image}: not exact"


def test_compose_host_ports_clear_of_supabase_cli_and_local_servers() -> None:
    ports = _host_ports()
    assert len(ports) == 2
    assert set(ports).isdisjoint(TAKEN_PORTS)


def test_docs_name_the_compose_ports() -> None:
    """Every loopback PostgreSQL URL in the README, the docs and compose.yaml's comments
    names a local server's port or one that compose.yaml publishes."""
    known = set(_host_ports()) | {5432, 6432}
    url = re.compile(r"postgres(?:ql)?://[^@\s/]*@(?:127\.0\.0\.1|localhost):(\d+)")
    for path in [README, COMPOSE, *DOCS.rglob("*.md")]:
        for port in url.findall(path.read_text()):
            assert int(port) in known, f"{path.relative_to(ROOT)} names port {port}"
