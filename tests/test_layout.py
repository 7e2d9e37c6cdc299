"""The repository stays easy to find one's way in: a short README that reaches every reference page,
links that resolve, no run outputs under version control, no function too long to read at once."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess

import pytest

from srgan.config import PROJECT_ROOT

README = PROJECT_ROOT / "README.md"
DOCS = PROJECT_ROOT / "docs"
MAX_README_LINES = 200
MAX_FUNCTION_LINES = 80
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def _relative_links(page):
    return [t for t in LINK.findall(page.read_text()) if not re.match(r"[a-z]+://|mailto:", t)]


def test_readme_is_a_short_front_door_that_reaches_every_reference_page():
    lines = README.read_text().splitlines()
    assert len(lines) < MAX_README_LINES, f"README.md has {len(lines)} lines; move reference text to docs/"
    linked = {(README.parent / t).resolve() for t in _relative_links(README)}
    pages = sorted(DOCS.glob("*.md"))
    assert pages
    unreached = [p.name for p in pages if p.resolve() not in linked]
    assert not unreached, f"docs pages no link in README.md reaches: {unreached}"


@pytest.mark.parametrize("page", [README, *sorted(DOCS.glob("*.md"))], ids=lambda p: p.name)
def test_relative_links_resolve(page):
    broken = [t for t in _relative_links(page) if not (page.parent / t).exists()]
    assert not broken, f"{page.name}: links to missing files {broken}"


def test_no_function_in_src_is_longer_than_a_screen():
    long = []
    for path in sorted((PROJECT_ROOT / "src" / "srgan").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length >= MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(PROJECT_ROOT)}:{node.lineno} {node.name} ({length} lines)")
    assert not long, "functions of 80 lines or more:\n" + "\n".join(long)


@pytest.mark.skipif(shutil.which("git") is None or not (PROJECT_ROOT / ".git").exists(), reason="not a git checkout")
def test_no_run_outputs_are_under_version_control():
    files = subprocess.run(
        ["git", "ls-files"], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    outputs = re.compile(r"^(checkpoints|model|outputs|multirun|mlruns|mlartifacts)/|^resolved_config\.yaml$|\.db$")
    tracked = [f for f in files if outputs.search(f)]
    assert not tracked, f"run outputs committed: {tracked[:10]}"
