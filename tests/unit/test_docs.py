"""The README stays short and its links resolve; every docs page is in the site's navigation.

(`make docs` builds the site itself with strict warnings: broken links inside docs/ fail there.)
"""

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_readme_is_short_and_its_relative_links_resolve():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 250, "README.md is over 250 lines: move the detail into a page under docs/"
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    assert targets, "README.md links nowhere"
    missing = [t for t in targets if "://" not in t and not (ROOT / t).exists()]
    assert not missing, f"README.md links to files that do not exist: {missing}"


def _nav_pages(node) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, list):
        return [p for item in node for p in _nav_pages(item)]
    if isinstance(node, dict):
        return [p for value in node.values() for p in _nav_pages(value)]
    return []


def test_every_docs_page_is_in_the_nav():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    nav = set(_nav_pages(config["nav"]))
    pages = {p.relative_to(ROOT / "docs").as_posix() for p in (ROOT / "docs").glob("*.md")}
    assert pages <= nav, f"docs pages missing from mkdocs.yml's nav: {sorted(pages - nav)}"


def test_every_source_path_the_docs_name_exists():
    pattern = re.compile(r"`((?:components|flows|serving|rlhf_cli|bench|infra|tests)/[A-Za-z0-9_./-]+)")
    pages = [ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "infra").glob("*.md")]
    missing = set()
    for page in pages:
        for path in pattern.findall(page.read_text(encoding="utf-8")):
            path = path.rstrip(".,:)")
            if not path.startswith("bench/.venv") and not (ROOT / path).exists():
                missing.add(f"{page.relative_to(ROOT)}: {path}")
    assert not missing, f"docs name files that do not exist (moved or renamed?): {sorted(missing)}"
