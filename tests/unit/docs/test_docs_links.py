"""A reader who follows a link in the repository's Markdown lands on a file that exists, and on
the heading its #fragment names. External http(s) links are not fetched."""

from __future__ import annotations

import os
import re
import unicodedata
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from markdown_it import MarkdownIt

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]
SKIPPED_FOLDERS = {"var", "node_modules"}  # and every hidden one: .git, .venv, caches
HTML_TARGET = re.compile(r"""\b(?:href|src)\s*=\s*["']([^"']+)["']""")
HTML_ANCHOR = re.compile(r"""\b(?:id|name)\s*=\s*["']([^"']+)["']""")
PARSER = MarkdownIt("commonmark").enable("table")


def markdown_files(root: Path) -> list[Path]:
    found = []
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith(".") and d not in SKIPPED_FOLDERS)
        found += [Path(folder) / name for name in sorted(files) if name.endswith(".md")]
    return found


def _tokens(path: Path):
    for token in PARSER.parse(path.read_text(encoding="utf-8")):
        yield token
        yield from token.children or ()


def github_slug(text: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, each space a hyphen."""
    kept = "".join(c for c in text.strip().lower() if c in " -_" or unicodedata.category(c)[0] in "LMN")
    return kept.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found: set[str] = set()
    seen: dict[str, int] = {}
    tokens = list(PARSER.parse(path.read_text(encoding="utf-8")))
    for opening, inline in zip(tokens, tokens[1:]):
        if opening.type == "heading_open":
            text = "".join(c.content for c in inline.children or () if c.type in ("text", "code_inline"))
            slug = github_slug(text)
            found.add(f"{slug}-{seen[slug]}" if slug in seen else slug)
            seen[slug] = seen.get(slug, 0) + 1
    for token in _tokens(path):
        if token.type in ("html_block", "html_inline"):
            found.update(HTML_ANCHOR.findall(token.content))
    return found


def link_targets(path: Path) -> list[str]:
    targets = []
    for token in _tokens(path):
        if token.type == "link_open":
            targets.append(token.attrs["href"])
        elif token.type == "image":
            targets.append(token.attrs["src"])
        elif token.type in ("html_block", "html_inline"):
            targets += HTML_TARGET.findall(token.content)
    return targets


def broken_links(path: Path, root: Path) -> list[str]:
    broken = []
    for target in link_targets(path):
        parts = urlsplit(target)
        if parts.scheme or parts.netloc:
            continue
        destination = path
        if parts.path:
            relative = unquote(parts.path)
            base = root if relative.startswith("/") else path.parent
            destination = (base / relative.lstrip("/")).resolve()
            if not destination.is_relative_to(root.resolve()) or not destination.exists():
                broken.append(f"{target}: no such file in the repository")
                continue
        fragment = unquote(parts.fragment)
        if fragment and destination.suffix == ".md" and fragment not in anchors(destination):
            broken.append(f"{target}: no heading #{fragment} in {destination.relative_to(root.resolve())}")
    return broken


MARKDOWN = markdown_files(ROOT)


@pytest.mark.parametrize("path", MARKDOWN, ids=[str(p.relative_to(ROOT)) for p in MARKDOWN])
def test_every_relative_link_points_at_something(path):
    assert broken_links(path, ROOT) == []


def test_the_readers_pages_are_all_checked():
    checked = {str(p.relative_to(ROOT)) for p in MARKDOWN}
    assert {"README.md", "docs/bench/README.md", "docs/configuration.md", "docs/contracts.md",
            "docs/planner/README.md", "planner/README.md", "frontend/README.md", "k8s/README.md"} <= checked
    assert sum(len(link_targets(ROOT / name)) for name in checked) > 100


def test_a_missing_file_a_missing_heading_and_a_way_out_of_the_repository_are_each_reported(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "guide.md").write_text(
        "# Guide\n\n## `make run`: the two commands — and more\n\n## Setup\n\n## Setup\n\n"
        "```sh\n# a comment, not a heading\n```\n"
    )
    (tmp_path / "README.md").write_text(
        "[ok](docs/guide.md) [ok](docs/guide.md#make-run-the-two-commands--and-more) "
        "[ok](docs/guide.md#setup-1) [ok](#readme) [ok](/docs/) ![ok](docs/guide.md) "
        "[web](https://example.com/nowhere) `[code](nowhere.md)`\n\n# Readme\n\n"
        "[gone](docs/missing.md) [bad](docs/guide.md#a-comment-not-a-heading) [out](../outside.md)\n"
    )
    assert broken_links(tmp_path / "README.md", tmp_path) == [
        "docs/missing.md: no such file in the repository",
        "docs/guide.md#a-comment-not-a-heading: no heading #a-comment-not-a-heading in docs/guide.md",
        "../outside.md: no such file in the repository",
    ]
