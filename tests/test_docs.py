"""The README and docs/: every rendered number agrees with its results file, the manual builds strictly, and the
README's links lead somewhere."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import render_docs  # noqa: E402
from doc_fragments import PAGES  # noqa: E402


def copy_pages(destination: Path) -> Path:
    shutil.copy(ROOT / "README.md", destination / "README.md")
    shutil.copytree(ROOT / "docs", destination / "docs")
    shutil.copy(ROOT / "mkdocs.yml", destination / "mkdocs.yml")
    return destination


def test_every_rendered_span_matches_its_results_file(capsys):
    assert render_docs.main(["--check"]) == 0, capsys.readouterr().err


def test_a_hand_edited_number_fails_the_check_and_rendering_restores_it(tmp_path, capsys):
    root = copy_pages(tmp_path)
    readme = (root / "README.md").read_text(encoding="utf-8")
    span = re.search(r"<!-- rendered: quickstart.table -->(.*?)<!-- /rendered -->", readme, re.S)
    edited = readme[:span.start(1)] + re.sub(r"\d", lambda d: str((int(d[0]) + 1) % 10), span[1], count=1) \
        + readme[span.end(1):]
    (root / "README.md").write_text(edited, encoding="utf-8")

    assert render_docs.main(["--check", "--root", str(root)]) == 1
    line = readme.count("\n", 0, span.start()) + 1
    assert f"README.md:{line}: fragment quickstart.table differs from its results file" in capsys.readouterr().err
    assert render_docs.main(["--root", str(root)]) == 0
    assert (root / "README.md").read_text(encoding="utf-8") == readme


def test_a_span_naming_no_fragment_is_an_error(tmp_path):
    root = copy_pages(tmp_path)
    with (root / "docs" / "index.md").open("a", encoding="utf-8") as page:
        page.write("\n<!-- rendered: no.such.fragment -->1<!-- /rendered -->\n")
    with pytest.raises(SystemExit, match=r"docs/index.md:\d+: no fragment named 'no.such.fragment'"):
        render_docs.main(["--check", "--root", str(root)])


def mkdocs_build(root: Path, site: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(root / "mkdocs.yml"),
                           "-d", str(site)], capture_output=True, text=True)


def test_the_manual_builds_strictly_and_a_broken_link_fails_it(tmp_path):
    build = mkdocs_build(ROOT, tmp_path / "site")
    assert build.returncode == 0, build.stderr[-3000:]
    assert (tmp_path / "site" / "performance" / "index.html").is_file()

    (tmp_path / "copy").mkdir()
    root = copy_pages(tmp_path / "copy")
    with (root / "docs" / "training.md").open("a", encoding="utf-8") as page:
        page.write("\nSee [the checkpoints](getting-started.md#no-such-section).\n")
    broken = mkdocs_build(root, tmp_path / "broken-site")
    assert broken.returncode != 0 and "no-such-section" in broken.stderr


def test_the_navigation_and_the_maps_list_every_page():
    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))["nav"]
    pages = [next(iter(entry.values())) for entry in nav]
    assert pages == ["index.md", *PAGES]
    assert sorted(pages) == sorted(path.name for path in (ROOT / "docs").glob("*.md"))


def slug(heading: str) -> str:
    """The anchor MkDocs' table of contents and GitHub give a heading."""
    text = re.sub(r"[^\w\s-]", "", heading.strip().lower().replace("`", ""))
    return re.sub(r"\s+", "-", text)


def test_every_relative_link_of_the_readme_leads_to_a_page_and_its_section():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    links = re.findall(r"\]\(((?!https?:)[^)#]+)(?:#([^)]+))?\)", readme)
    assert len(links) >= len(PAGES)
    for target, anchor in links:
        page = ROOT / target
        assert page.is_file(), target
        if anchor:
            headings = re.findall(r"^#+ (.+)$", page.read_text(encoding="utf-8"), re.M)
            assert anchor in {slug(heading) for heading in headings}, f"{target}#{anchor}"
