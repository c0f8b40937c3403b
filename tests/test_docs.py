"""The documentation holds together: every relative link and anchor resolves, the README
stays a page a newcomer takes in within a minute, and every docs page can be reached.

Why: the reference manual is split over README.md and docs/, so a renamed heading or a moved
file silently strands a reader; and `.ci/fresh` runs the first command of the README's first
code block, so that block is an interface, not prose. No server is needed; this runs in
well under a second.
"""

from __future__ import annotations

import base64
import importlib.machinery
import importlib.util
import re
import unicodedata
from pathlib import Path
from types import ModuleType
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
README_MAX_LINES = 150
# The README's first code block, exactly: `.ci/fresh` runs its first line on a bare machine.
MAIN_COMMAND = (
    "./bin/testbed run wan-outage-long   # main job: an 11h WAN outage on real servers, checked"
)
TEST_COMMAND = (
    "./bin/test                          "
    "# the tests, and the scenario catalog (real servers on loopback)"
)

FENCE_OPEN = re.compile(r"^ {0,3}(`{3,}|~{3,})")
CODE_SPAN = re.compile(r"(`+)(.+?)\1", re.DOTALL)
# [text](target "title") and ![alt](target); the target may be in <angle brackets>.
INLINE_LINK = re.compile(r"!?\[[^\]]*\]\(\s*(<[^>]*>|[^\s()]+)(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_DEFINITION = re.compile(r"^ {0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)", re.MULTILINE)
HTML_LINK = re.compile(r"<(?:a|img)\b[^>]*?\b(?:href|src)=\"([^\"]+)\"", re.IGNORECASE)
HTML_ANCHOR = re.compile(r"<[a-z][^>]*?\b(?:id|name)=\"([^\"]+)\"", re.IGNORECASE)
ATX_HEADING = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
SETEXT_UNDERLINE = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def _doc_files() -> list[Path]:
    """The Markdown files whose links are checked: README, docs, the scenario guide, examples."""
    files = [README, *sorted(DOCS.glob("*.md")), ROOT / "scenarios" / "README.md"]
    files += sorted((ROOT / "examples").glob("**/*.md"))
    return [f for f in files if f.exists()]


def blank_fenced_code(text: str) -> str:
    """The text with every fenced code block (fences included) blanked, line count kept:
    a link or heading inside a code block is an example, not a link or a heading."""
    lines = text.split("\n")
    fence: str | None = None
    for i, line in enumerate(lines):
        if fence is None:
            opened = FENCE_OPEN.match(line)
            if opened:
                fence = opened.group(1)
                lines[i] = ""
        else:
            closing = line.strip()
            if closing.startswith(fence[0] * len(fence)) and not closing.strip(fence[0]):
                fence = None
            lines[i] = ""
    return "\n".join(lines)


def _blank_code_spans(text: str) -> str:
    """Code spans become a word of the same lines: `[x](y)` in backticks is not a link, but a
    link whose text is a code span stays a link."""
    return CODE_SPAN.sub(lambda m: "code" + "\n" * m.group(0).count("\n"), text)


def _plain_heading(markdown: str) -> str:
    """A heading's rendered text, as GitHub slugs it: link texts kept, targets and tags gone."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", markdown)
    return re.sub(r"<[^>]+>", "", text)


def github_slug(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, punctuation dropped except `-` and `_`,
    spaces to `-` (duplicates are numbered by `anchors`)."""
    kept = (
        ch
        for ch in _plain_heading(heading).strip().lower()
        if ch in " -_" or unicodedata.category(ch)[0] in "LMN"
    )
    return "".join(kept).replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every anchor a Markdown page offers: its headings' slugs, a repeated slug numbered
    `-1`, `-2`, ... in order, and explicit HTML `id`/`name` attributes."""
    lines = blank_fenced_code(text).split("\n")
    seen: dict[str, int] = {}
    found: set[str] = set()
    for i, line in enumerate(lines):
        atx = ATX_HEADING.match(line)
        if atx:
            heading = atx.group(2) or ""
        elif i > 0 and lines[i - 1].strip() and SETEXT_UNDERLINE.match(line):
            previous = lines[i - 1]
            if ATX_HEADING.match(previous) or previous.lstrip().startswith(("-", "*", "|")):
                continue
            heading = previous
        else:
            continue
        slug = github_slug(heading)
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    found.update(HTML_ANCHOR.findall(text))
    return found


def _link_targets(text: str) -> list[tuple[int, str]]:
    """(line number, target) of every link, image and reference definition outside code."""
    prose = _blank_code_spans(blank_fenced_code(text))
    targets = []
    for pattern in (INLINE_LINK, REFERENCE_DEFINITION, HTML_LINK):
        for match in pattern.finditer(prose):
            target = match.group(1).strip()
            if target.startswith("<") and target.endswith(">"):
                target = target[1:-1]
            targets.append((prose.count("\n", 0, match.start()) + 1, target))
    return sorted(targets)


def check_links(page: Path, root: Path = ROOT, text: str | None = None) -> list[str]:
    """Every broken relative link of a Markdown page, one line each ("file:line: why"); an
    empty list when all resolve. External links (http, https, mailto, any scheme) are
    not fetched: only what the repository itself must hold is checked."""
    if text is None:
        text = page.read_text(encoding="utf-8")
    root = root.resolve()
    problems = []
    for line, target in _link_targets(text):
        if SCHEME.match(target) or target.startswith("//"):
            continue
        where = f"{page.relative_to(root) if page.is_relative_to(root) else page}:{line}"
        path_part, _, fragment = target.partition("#")
        path_part = unquote(path_part.split("?", 1)[0])
        if not path_part:
            resolved = page.resolve()
        elif path_part.startswith("/"):
            resolved = (root / path_part.lstrip("/")).resolve()
        else:
            resolved = (page.parent / path_part).resolve()
        if not resolved.is_relative_to(root):
            problems.append(f"{where}: {target} points outside the repository")
            continue
        if not resolved.exists():
            problems.append(f"{where}: {target}: no such file {resolved.relative_to(root)}")
            continue
        if fragment and resolved.suffix == ".md":
            offered = anchors(resolved.read_text(encoding="utf-8"))
            if unquote(fragment) not in offered:
                problems.append(
                    f"{where}: {target}: no heading #{fragment} in {resolved.relative_to(root)}"
                )
    return problems


def _first_code_block(text: str) -> list[str]:
    """The lines inside the first fenced code block of a Markdown text."""
    block: list[str] = []
    fence: str | None = None
    for line in text.split("\n"):
        if fence is None:
            opened = FENCE_OPEN.match(line)
            if opened:
                fence = opened.group(1)
        elif line.strip().startswith(fence):
            return block
        else:
            block.append(line)
    raise AssertionError("no fenced code block")


@pytest.mark.parametrize("page", _doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_anchor_resolves(page: Path) -> None:
    assert check_links(page) == []


def test_readme_is_at_most_150_lines() -> None:
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines: move detail to docs/"


def test_readme_first_code_block_is_the_main_job_then_the_tests() -> None:
    assert _first_code_block(README.read_text(encoding="utf-8")) == [MAIN_COMMAND, TEST_COMMAND]


def test_every_docs_page_is_linked_from_readme_or_index() -> None:
    linked = set()
    for source in (README, DOCS / "index.md"):
        for _, target in _link_targets(source.read_text(encoding="utf-8")):
            path_part = unquote(target.partition("#")[0])
            if path_part and not SCHEME.match(path_part):
                linked.add((source.parent / path_part).resolve())
    pages = {page.resolve() for page in DOCS.glob("*.md")}
    assert pages, "docs/ has no pages"
    assert sorted(str(p.relative_to(ROOT)) for p in pages - linked) == []


@pytest.mark.parametrize("page", sorted(DOCS.glob("*.md")), ids=lambda p: p.name)
def test_every_docs_page_starts_with_a_title_and_links_back_to_the_readme(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    assert text.startswith("# "), f"{page.name} does not start with a # title"
    assert "../README.md" in {target.partition("#")[0] for _, target in _link_targets(text)}


def test_the_checker_reports_a_broken_file_link_and_a_broken_anchor(tmp_path: Path) -> None:
    (tmp_path / "target.md").write_text("# Target\n\n## Real heading\n", encoding="utf-8")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n"
        "[fine](target.md#real-heading) and [also fine](#page)\n"
        "[missing file](nowhere.md)\n"
        "[missing anchor](target.md#no-such-heading)\n",
        encoding="utf-8",
    )
    problems = check_links(page, root=tmp_path)
    assert len(problems) == 2, problems
    assert problems[0].startswith("page.md:4: nowhere.md: no such file")
    assert problems[1].startswith("page.md:5: target.md#no-such-heading: no heading")


def test_the_checker_skips_code_blocks_code_spans_and_external_links(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    text = (
        "# Page\n\n"
        "```md\n[in a fence](nowhere.md)\n# not a heading\n```\n\n"
        "`[in a code span](nowhere.md)` [web](https://example.com/x.md#y) "
        "[mail](mailto:someone@example.com)\n"
        "[up](../outside.md)\n"
    )
    problems = check_links(page, root=tmp_path, text=text)
    assert problems == ["page.md:9: ../outside.md points outside the repository"]
    assert "not-a-heading" not in anchors(text)


def test_anchors_follow_github_slug_rules() -> None:
    text = (
        "# Generated timelines: `testbed fuzz`\n"
        "## A link's bandwidth is one capacity\n"
        "## Operator procedures (disaster recovery and return to normal)\n"
        "## snake_case and [a link](x.md)\n"
        "## Output\n## Output\nOutput\n------\n"
    )
    assert anchors(text) == {
        "generated-timelines-testbed-fuzz",
        "a-links-bandwidth-is-one-capacity",
        "operator-procedures-disaster-recovery-and-return-to-normal",
        "snake_case-and-a-link",
        "output",
        "output-1",
        "output-2",
    }


def _timeline_script() -> ModuleType:
    """docs/make-timeline-png as a module (it has no .py suffix: it is run as a command)."""
    path = DOCS / "make-timeline-png"
    loader = importlib.machinery.SourceFileLoader("make_timeline_png", str(path))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def test_the_readme_picture_is_a_png_the_script_can_remake() -> None:
    png = (DOCS / "images" / "timeline.png").read_bytes()
    script = _timeline_script()
    assert png.startswith(script.PNG_SIGNATURE)
    assert (DOCS / "make-timeline-png").stat().st_mode & 0o111, "the script is not executable"


def test_the_script_takes_the_timeline_out_of_a_report_page() -> None:
    script = _timeline_script()
    png = script.PNG_SIGNATURE + b"plot"
    encoded = base64.b64encode(png).decode()
    page = f'<p>verdict</p>\n<img alt="timeline" src="data:image/png;base64,{encoded}" style="">'
    assert script.extract_timeline_png(page) == png
    with pytest.raises(ValueError, match="no <img"):
        script.extract_timeline_png("<p>no plot</p>")
