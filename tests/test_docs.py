"""The README and docs/*.md stay true to the repository: every relative link and every repository
path they name exists, every #anchor is a heading of its page, and the README stays short and keeps
the quick start's two commands (the Makefile and .ci/run rely on `make test`)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 300

# A path of this repository: one of its top-level folders, then path characters only. Anything with
# a placeholder (<stem>, NAME), a glob or an ellipsis does not match as a whole and is skipped.
REPO_PATH = re.compile(r"(?:agent|tests|sandbox|tools|examples|bench|docs|\.ci)(?:/[\w.\-]+)*/?")
TOP_FILES = {"README.md", "Makefile", "pyproject.toml"}
FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})[^`]*$")  # a backtick fence's info has no backtick
CODE_SPAN = re.compile(r"(`+)(.+?)\1")
LINK = re.compile(r"!?\[[^\]\n]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def lines_with_fences(path: Path):
    """(line number, text, inside a fenced code block) for each line."""
    fence = None
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        m = FENCE.match(line)
        if m:
            mark = m.group(1)
            if fence is None:
                fence = mark[0] * len(mark)
                yield n, line, True
                continue
            if mark.startswith(fence):
                fence = None
                yield n, line, True
                continue
        yield n, line, fence is not None


def slug(text: str) -> str:
    """GitHub's anchor for a heading: markup and punctuation (but - and _) dropped, lowercase,
    each space a hyphen."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link keeps its text
    text = text.replace("`", "").lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for _, line, fenced in lines_with_fences(path):
        m = None if fenced else HEADING.match(line)
        if not m:
            continue
        base = slug(m.group(2))
        k = seen.get(base, 0)
        seen[base] = k + 1
        out.add(base if k == 0 else f"{base}-{k}")
    return out


def path_tokens(text: str):
    for token in re.split(r"[\s\"'()\[\]{},=]+", text):
        token = token.rstrip(".:;")
        if not token or "..." in token or "…" in token:
            continue
        if token in TOP_FILES or REPO_PATH.fullmatch(token):
            yield token


def mentioned_paths(path: Path):
    """(line number, path) for each repository path in inline code or a fenced block."""
    for n, line, fenced in lines_with_fences(path):
        if fenced:
            if not FENCE.match(line):
                yield from ((n, p) for p in path_tokens(line))
            continue
        for m in CODE_SPAN.finditer(line):
            yield from ((n, p) for p in path_tokens(m.group(2)))


def links(path: Path):
    """(line number, target) for each Markdown link outside code."""
    for n, line, fenced in lines_with_fences(path):
        if fenced:
            continue
        for m in LINK.finditer(CODE_SPAN.sub("", line)):
            yield n, m.group(1)


def test_the_pages_exist():
    names = {p.name for p in PAGES}
    assert {"README.md", "usage.md", "models.md", "sandbox.md", "security.md", "tasks.md",
            "configuration.md", "performance.md", "development.md"} <= names


def test_every_path_named_in_the_docs_exists():
    stale = [f"{rel(page)}:{n}: `{p}`" for page in PAGES for n, p in mentioned_paths(page)
             if not (ROOT / p).exists()]
    assert not stale, "paths named in the docs that are not in the repository:\n" + "\n".join(stale)


def test_every_relative_link_and_anchor_resolves():
    bad = []
    for page in PAGES:
        for n, target in links(page):
            if re.match(r"[a-z][a-z0-9+.\-]*:", target, re.I):  # https:, mailto:, ...
                continue
            file_part, _, anchor = target.partition("#")
            dest = (page.parent / file_part).resolve() if file_part else page
            where = f"{rel(page)}:{n}: ({target})"
            if not dest.exists():
                bad.append(f"{where}: no such file")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                bad.append(f"{where}: no heading #{anchor} in {dest.relative_to(ROOT).as_posix()}")
    assert not bad, "links that do not resolve:\n" + "\n".join(bad)


def test_each_docs_page_has_one_title_and_links_back():
    wrong = []
    for page in PAGES[1:]:
        text = page.read_text(encoding="utf-8")
        titles = [line for _, line, fenced in lines_with_fences(page) if not fenced and re.match(r"# ", line)]
        if not text.startswith("# ") or len(titles) != 1:
            wrong.append(f"{rel(page)}: {len(titles)} H1 titles, the first line {text.splitlines()[0]!r}")
        if "](../README.md" not in text:
            wrong.append(f"{rel(page)}: no link back to the README")
    assert not wrong, "\n".join(wrong)


def test_the_readme_is_short_and_keeps_the_quick_start():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) < README_MAX_LINES, f"README.md has {len(text.splitlines())} lines"
    quick = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    assert re.search(r"^make demo\b", quick, re.M) and re.search(r"^make test\b", quick, re.M), quick
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert re.search(r"^demo:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
    assert "make test" in (ROOT / ".ci" / "run").read_text(encoding="utf-8")


@pytest.mark.parametrize("heading, expected", [
    ("Remote kernels (Jupyter Kernel Gateway / Enterprise Gateway)",
     "remote-kernels-jupyter-kernel-gateway--enterprise-gateway"),
    ("The sandbox (`sandbox/`)", "the-sandbox-sandbox"),
    ("Tokens, cost and budgets", "tokens-cost-and-budgets"),
    ("Configuration file and environment variables", "configuration-file-and-environment-variables"),
])
def test_slug_follows_github(heading, expected):
    assert slug(heading) == expected
