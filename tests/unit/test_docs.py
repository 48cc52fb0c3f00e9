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


HISTORY_PAGES = {"benchmarks.md", "measurements.md", "alignment.md"}  # logs of past runs keep the names of their day
RETIRED = {"data": "validation / seeding", "ppo": "policy"}  # sections split or renamed: old name -> new
NOT_PARAMS = {"flow.serve", "flow.deploy", "flow.to_deployment", "flow.from_source"}  # Prefect's Flow methods


def test_every_params_key_the_docs_name_exists():
    import dataclasses

    from components.project.params import SECTIONS

    pattern = re.compile(r"`([a-z_]+)\.([a-z_0-9]+)(?![a-z_0-9(])")
    pages = [ROOT / "README.md", *(p for p in (ROOT / "docs").glob("*.md") if p.name not in HISTORY_PAGES)]
    unknown = set()
    for page in pages:
        for section, key in pattern.findall(page.read_text(encoding="utf-8")):
            if (
                key in {"py", "dvc", "yaml", "json", "jsonl", "md", "csv", "png", "txt"}
                or f"{section}.{key}" in NOT_PARAMS
            ):
                continue  # a file name, or not a params key
            if section in RETIRED and section not in SECTIONS:
                unknown.add(f"{page.name}: {section}.{key} (section {section} is now {RETIRED[section]})")
            cls = SECTIONS.get(section)
            if cls is not None and key not in {f.name for f in dataclasses.fields(cls)}:
                unknown.add(f"{page.name}: {section}.{key}")
    assert not unknown, f"docs name params keys that do not exist (renamed?): {sorted(unknown)}"
