"""The documentation (issue 23): README.md is the map, docs/ the pages, built by MkDocs. A strict
build fails on a broken link or anchor between pages, a page left out of the nav, and a README
section the home page includes (`--8<--`) that is gone; the README's own links, which MkDocs
never sees, are checked here against the files and headings they name."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def nav_pages() -> list[str]:
    """Every page mkdocs.yml's nav lists, as paths relative to docs/."""
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    assert config["docs_dir"] == "docs", config["docs_dir"]
    pages: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, str):
            pages.append(node)
        elif isinstance(node, list):
            for item in node:
                walk(item)
        elif isinstance(node, dict):
            for value in node.values():
                walk(value)

    walk(config["nav"])
    return pages


def built_page(site: Path, page: str) -> Path:
    """Where MkDocs (use_directory_urls, its default) writes `page`."""
    stem = page.removesuffix(".md")
    if stem == "index" or stem.endswith("/index"):
        return site / f"{stem}.html"
    return site / stem / "index.html"


def test_mkdocs_strict_build_builds_every_nav_page(tmp_path: Path) -> None:
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    missing = [page for page in nav_pages() if not built_page(site, page).is_file()]
    assert not missing, f"nav pages not built: {missing}"
    # A table whose header row Markdown did not recognise comes out as text.
    unrendered = [p.name for p in site.rglob("*.html") if "|---" in p.read_text(encoding="utf-8")]
    assert not unrendered, f"tables left as text in {unrendered}"


def test_every_docs_page_is_in_the_nav() -> None:
    pages = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md"))
    nav = nav_pages()
    assert sorted(set(nav)) == sorted(nav), f"a page twice in the nav: {nav}"
    assert pages == sorted(nav), f"docs/ pages {pages} vs. mkdocs.yml nav {sorted(nav)}"


def github_anchors(markdown: str) -> set[str]:
    """The ids GitHub gives the headings of a Markdown file (outside code blocks)."""
    anchors: set[str] = set()
    fenced = False
    for line in markdown.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (heading := re.match(r"#{1,6} (.+)", line)):
            text = heading.group(1).strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", text).replace(" ", "-"))
    return anchors


def test_readme_relative_links_point_to_files_and_headings_that_exist() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    relative = [link for link in links if not re.match(r"[a-z]+:", link)]
    assert any(link.startswith("docs/") for link in relative), relative
    broken = []
    for link in relative:
        path, _, anchor = link.partition("#")
        target = ROOT / path if path else ROOT / "README.md"
        if not target.exists():
            broken.append(f"{link}: no file {path}")
        elif (
            anchor
            and target.suffix == ".md"
            and anchor not in github_anchors(target.read_text(encoding="utf-8"))
        ):
            broken.append(f"{link}: no heading #{anchor} in {path or 'README.md'}")
    assert not broken, "README links:\n" + "\n".join(broken)


def test_readme_links_every_docs_page() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    linked = {link.partition("#")[0] for link in re.findall(r"\]\((docs/[^)\s]+)\)", text)}
    pages = {f"docs/{page}" for page in nav_pages()}
    assert pages <= linked, f"pages the README does not link: {sorted(pages - linked)}"


def stage_table() -> dict[str, tuple[set[str], str]]:
    """docs/methods.md's stage table: each stage's params (the `reads` column) and `writes`."""
    text = (DOCS / "methods.md").read_text(encoding="utf-8")
    table = text.split("## The stages", 1)[1].split("\n\n", 2)[1]
    rows: dict[str, tuple[set[str], str]] = {}
    for line in table.splitlines()[2:]:
        stage, reads, writes = (cell.strip() for cell in line.strip("|").split(" | ", 2))
        rows[stage.strip("`")] = (set(re.findall(r"`([^`]+)`", reads)), writes)
    return rows


def test_stage_table_matches_dvc_yaml() -> None:
    """Every stage of dvc.yaml is a row, reading exactly the params dvc.yaml gives it and
    naming every output it declares (issue 23: the table had drifted from the code)."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    rows = stage_table()
    assert list(rows) == list(stages)
    for name, stage in stages.items():
        params = {
            key
            for entry in stage.get("params", [])
            for key in ([entry] if isinstance(entry, str) else entry)
        }
        reads, writes = rows[name]
        assert reads == params, f"docs/methods.md, stage {name}: reads {reads}, dvc.yaml {params}"
        outs = [
            next(iter(out)) if isinstance(out, dict) else out
            for key in ("outs", "metrics", "plots")
            for out in stage.get(key, [])
        ]
        missing = [out for out in outs if f"`{out}" not in writes]
        assert not missing, f"docs/methods.md, stage {name}: writes does not name {missing}"
