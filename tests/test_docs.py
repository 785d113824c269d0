"""Every protocol section a comment or docstring cites is a section of docs/protocol.md, so that a
citation can never point at a document, or a section, that a clone of the repository does not have."""

from __future__ import annotations

import ast
import dataclasses
import io
import re
import tokenize
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "protocol.md"
SCANNED = (ROOT / "presence_server", ROOT / "tests")

_NUMBER = r"\d+(?:\.\d+)*"
_LIST = rf"{_NUMBER}(?:\s*(?:,|and|to)\s*{_NUMBER})*"
# "docs/protocol.md 2.2.7", and the older "protocol 1.4, 1.5 and 7" or "(protocol 2.3 to 2.8)".
_CITED = re.compile(rf"(?:docs/protocol\.md|\bprotocol)\s+({_LIST})")
# A bare "(2.2.7)" or "(2.3 to 2.8, 1.2)". "(1.5)" alone is left out: it may as well be seconds.
_BARE = re.compile(rf"\(({_LIST})\)")
NEWLINE = "\n"
_HEADING = re.compile(rf"^#+\s+({_NUMBER})\.?\s", re.MULTILINE)
# A section named by its title: docs/protocol.md, "Limits".
_TITLED = re.compile(r'docs/protocol\.md,?\s*"([^"]+)"')


def headings(markdown: str) -> list[str]:
    """The section numbers of a Markdown document's headings, in order."""
    return _HEADING.findall(markdown)


def _resolves(section: str, markdown: str) -> bool:
    if section.startswith('"'):  # a title: some heading contains it
        return any(section.strip('"') in line for line in markdown.splitlines() if line.startswith("#"))
    return section in headings(markdown)


def _expand(listed: str) -> list[str]:
    """``1.4, 1.5 and 7`` -> the three; ``2.3 to 2.8`` -> 2.3, 2.4, ... 2.8."""
    out: list[str] = []
    for part in re.split(r"\s*(?:,|\band\b)\s*", listed):
        first, _, last = (p.strip() for p in part.partition(" to "))
        if not last:
            out.append(first)
            continue
        stem, _, low = first.rpartition(".")
        stem_last, _, high = last.rpartition(".")
        if stem != stem_last or int(high) < int(low):  # not one run of siblings: check the two ends
            out += [first, last]
        else:
            out += [f"{stem}.{n}" if stem else str(n) for n in range(int(low), int(high) + 1)]
    return out


@dataclasses.dataclass(frozen=True)
class Citation:
    offset: int  # where in the comment or docstring
    section: str  # a number, or a quoted title: "Limits"
    named: bool  # False for "protocol 2.5", which does not say where the protocol is written


def cited(text: str) -> list[str]:
    """The section numbers (or quoted section titles) cited in a comment or docstring."""
    return [citation.section for citation in _cited_at(text)]


def _cited_at(text: str) -> list[Citation]:
    found = [
        Citation(match.start(), number, match.group(0).startswith("docs/"))
        for match in _CITED.finditer(text)
        for number in _expand(match.group(1))
    ]
    found += [Citation(match.start(), f'"{match.group(1)}"', True) for match in _TITLED.finditer(text)]
    for match in _BARE.finditer(text):
        listed = match.group(1)
        if " to " in listed or re.search(r"\d+\.\d+\.\d+", listed):
            found += [Citation(match.start(), number, True) for number in _expand(listed)]
    return found


def _prose(path: Path) -> Iterator[tuple[int, str]]:
    """(line, text) of each comment and string of a Python file, or each comment of a Lua file."""
    source = path.read_text(encoding="utf-8")
    if path.suffix == ".lua":
        for number, line in enumerate(source.splitlines(), 1):
            if "--" in line:
                yield number, line.partition("--")[2]
        return
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type in (tokenize.COMMENT, tokenize.STRING):
            yield token.start[0], token.string


def citations(roots: tuple[Path, ...] = SCANNED) -> list[tuple[str, Citation]]:
    """(``file:line``, citation) for every citation under ``roots`` (this file's own examples aside)."""
    out = []
    for root in roots:
        for path in sorted([*root.rglob("*.py"), *root.rglob("*.lua")]):
            if "node_modules" in path.parts or path.resolve() == Path(__file__).resolve():
                continue
            for line, text in _prose(path):
                for citation in _cited_at(text):
                    # A docstring starts on one line and may cite on a later one.
                    place = f"{path.relative_to(root.parent)}:{line + text.count(NEWLINE, 0, citation.offset)}"
                    out.append((place, citation))
    return out


def dangling(roots: tuple[Path, ...], doc: str) -> list[tuple[str, str]]:
    return [(where, c.section) for where, c in citations(roots) if not _resolves(c.section, doc)]


def test_every_cited_section_is_a_heading_of_docs_protocol() -> None:
    found = citations()
    # The code cites the document about twenty times: a scan that finds none is broken, not clean.
    assert len([where for where, _ in found if where.startswith("presence_server")]) >= 15, found
    assert dangling(SCANNED, DOC.read_text(encoding="utf-8")) == []


def test_citations_name_the_document() -> None:
    # "protocol 2.5" alone sends a reader looking for a document; "docs/protocol.md 2.5" does not.
    assert [(where, c.section) for where, c in citations() if not c.named] == []


def test_section_numbers_are_unique_and_the_limits_section_comes_last() -> None:
    text = DOC.read_text(encoding="utf-8")
    numbers = headings(text)
    assert len(numbers) == len(set(numbers)), sorted(n for n in numbers if numbers.count(n) > 1)
    top = re.findall(r"^## (.+)$", text, re.MULTILINE)
    assert "Limits and hardening choices" in top[-1], top


def test_citation_forms_are_all_read() -> None:
    text = "# protocol 1.4, 1.5 and 7; see (2.2.7), docs/protocol.md 2.3 to 2.5 (2.9 to 2.10, 1.2)"
    assert cited(text) == ["1.4", "1.5", "7", "2.3", "2.4", "2.5", "2.2.7", "2.9", "2.10", "1.2"]
    # Parenthesised numbers that are not citations: a delay, a version.
    assert cited("# retry after (1.5) seconds, as in (3.11)") == []
    assert cited('# at most 500 (docs/protocol.md, "Limits")') == ['"Limits"']
    assert [c.named for c in _cited_at("(protocol 1.2) (docs/protocol.md 1.2) (1.2.3)")] == [False, True, True]


def test_a_dangling_citation_is_reported_with_its_place(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "mod.py").write_text(
        '"""Doc (docs/protocol.md 2.1).\n\nAnd on its third line (2.1.4)."""\n\nX = 1  # protocol 2.2.7 and 9\n'
    )
    (package / "s.lua").write_text("-- the cursor (protocol 1.6)\nreturn 1\n-- (docs/protocol.md 1.7)\n")
    (package / "t.py").write_text('# (docs/protocol.md, "Limits") (docs/protocol.md, "Nowhere")\n')
    doc = "## 1. A\n### 1.6 B\n## 2. C\n### 2.1 D\n## 3. Limits of it\n"
    assert dangling((package,), doc) == [
        ("pkg/mod.py:3", "2.1.4"),
        ("pkg/mod.py:5", "2.2.7"),
        ("pkg/mod.py:5", "9"),
        ("pkg/s.lua:3", "1.7"),
        ("pkg/t.py:1", '"Nowhere"'),
    ]


def test_the_architecture_page_lists_every_kind_of_redis_key() -> None:
    # Each key kind keys.py builds has its row in docs/architecture.md: a new kind of key must
    # say there what it holds.
    tree = ast.parse((ROOT / "presence_server" / "store" / "keys.py").read_text(encoding="utf-8"))
    builders = [node.name for node in tree.body if isinstance(node, ast.FunctionDef) and not node.name.startswith("_")]
    keyset = next(node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "KeysetKeys")
    members = [node.name for node in keyset.body if isinstance(node, ast.FunctionDef)]
    for node in ast.walk(keyset):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
            members.append(node.attr)
    not_keys = {"__init__", "sub_key", "_base", "match_all"}  # a name, a prefix, a SCAN pattern
    wanted = {f"`{name}`" for name in builders} | {f"`KeysetKeys.{m}`" for m in members if m not in not_keys}
    page = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    assert len(wanted) >= 15, wanted
    assert sorted(name for name in wanted if name not in page) == []
