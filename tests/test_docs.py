"""What the documents claim: figures that match what the code does, sources a reader can open."""

import inspect
import os
import re
from urllib.parse import unquote

import pytest

from configs import demo as demo_config
from effdr_tf import demo
from effdr_tf.data.sources.synthetic_dr import SyntheticDR

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SKIP = {".git", ".venv", "out", "__pycache__", ".pytest_cache", ".ruff_cache", "node_modules"}


def _documents():
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in SKIP and not d.endswith(".egg-info")]
        for name in files:
            if name.endswith((".py", ".md", ".txt", ".html", ".toml", ".cfg")):
                yield os.path.join(folder, name)


def _text(path: str) -> str:
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


def test_nothing_cites_a_file_that_is_not_in_the_repository():
    # A reader of a clone can open every source the code and documents name.
    own = os.path.abspath(__file__)
    citing = [
        os.path.relpath(p, ROOT) for p in _documents() if p != own and "ANCHORS.md" in _text(p)
    ]
    assert citing == []


def test_readme_states_the_demo_test_split_it_builds():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    stated = re.search(r"held-out test split \((\d+) photographs of (\d+) patients\)", readme)
    assert stated, "the quickstart no longer states the demo's test split"
    images = inspect.signature(demo.run).parameters["num_images"].default
    source = SyntheticDR(num_images=images, seed=demo_config.get_config().seed, image_size=64)
    test = [r for r in source.scan() if r.split == "test"]
    assert (int(stated[1]), int(stated[2])) == (len(test), len({r.patient_id for r in test}))


def test_benchmarks_readme_states_each_protocols_hash():
    import hashlib

    readme = _text(os.path.join(ROOT, "benchmarks", "README.md"))
    folder = os.path.join(ROOT, "benchmarks", "protocols")
    for name in sorted(os.listdir(folder)):
        with open(os.path.join(folder, name), "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        assert f"`benchmarks/protocols/{name}` | `{digest}`" in readme, name


# Links between the pages: README.md is the landing page, docs/ holds one page per topic.

README_MAX_LINES = 250
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_HEADING = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1", re.S)
_INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^\s)>]*)>?(?:\s+[^)]*)?\)")
_REFERENCE_LINK = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s.*)?$", re.M)
_ABSOLUTE = re.compile(r"^(?:[a-zA-Z][a-zA-Z0-9+.-]*:|//)")


def _linked_pages() -> list[str]:
    docs = os.path.join(ROOT, "docs")
    pages = [os.path.join(docs, n) for n in sorted(os.listdir(docs)) if n.endswith(".md")]
    return [os.path.join(ROOT, "README.md"), *pages, os.path.join(ROOT, "benchmarks", "README.md")]


def _outside_fences(text: str) -> list[str]:
    """The lines of a Markdown text that are not inside fenced code blocks ("" in their place)."""
    lines, fence = [], None
    for line in text.split("\n"):
        opened = _FENCE.match(line)
        if fence is None and opened:
            fence = opened[1]
            lines.append("")
        elif fence is not None:
            if line.strip().startswith(fence[0] * len(fence)) and not line.strip().strip(fence[0]):
                fence = None
            lines.append("")
        else:
            lines.append(line)
    return lines


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: its text lowercased, without punctuation (letters,
    digits, spaces, hyphens and underscores stay), each space a hyphen."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML tags
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def heading_anchors(text: str) -> set[str]:
    """Every anchor of a page's headings, duplicates numbered -1, -2, ... as GitHub does."""
    anchors, seen = set(), {}
    lines = _outside_fences(text)
    for i, line in enumerate(lines):
        atx = _HEADING.match(line)
        if atx:
            heading = atx[2] or ""
        elif i and lines[i - 1].strip() and re.match(r"^ {0,3}(=+|-+)[ \t]*$", line):
            heading = lines[i - 1]  # a setext heading: the line above, underlined
            if _HEADING.match(heading):
                continue
        else:
            continue
        slug = github_slug(heading)
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def broken_links(path: str, root: str = ROOT) -> list[str]:
    """Each relative link of a Markdown page (outside code) whose file or anchor does not exist."""
    prose = _CODE_SPAN.sub("", "\n".join(_outside_fences(_text(path))))
    targets = _INLINE_LINK.findall(prose) + _REFERENCE_LINK.findall(prose)
    problems = []
    for target in targets:
        if not target or _ABSOLUTE.match(target):
            continue
        file_part, _, anchor = (unquote(part) for part in target.partition("#"))
        resolved = os.path.normpath(os.path.join(os.path.dirname(path), file_part))
        if not file_part:
            resolved = path
        elif os.path.commonpath([resolved, os.path.abspath(root)]) != os.path.abspath(root):
            problems.append(f"{target}: outside the repository")
            continue
        if not os.path.exists(resolved):
            problems.append(f"{target}: no such file")
        elif anchor and resolved.endswith(".md") and anchor not in heading_anchors(_text(resolved)):
            problems.append(f"{target}: no heading of {os.path.relpath(resolved, root)} has it")
    return problems


def test_readme_is_a_landing_page():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        lines = f.read().splitlines()
    assert len(lines) <= README_MAX_LINES, "move detail into a page under docs/"


def test_readme_quickstart_commands_are_makefile_targets():
    readme = _text(os.path.join(ROOT, "README.md"))
    makefile = _text(os.path.join(ROOT, "Makefile"))
    targets = set(re.findall(r"^make (\w+)", readme, re.M))
    assert {"demo", "test"} <= targets, "the quickstart's two commands"
    for target in targets:
        assert re.search(rf"^{target}:", makefile, re.M), target


def test_docs_index_lists_every_page():
    docs = os.path.join(ROOT, "docs")
    index = _text(os.path.join(docs, "index.md"))
    readme = _text(os.path.join(ROOT, "README.md"))
    for name in sorted(os.listdir(docs)):
        if name.endswith(".md") and name != "index.md":
            assert f"]({name})" in index, name
            assert f"](docs/{name})" in readme, name


@pytest.mark.parametrize(
    "page", [os.path.relpath(p, ROOT) for p in _linked_pages()], ids=lambda p: p
)
def test_every_relative_link_and_anchor_resolves(page):
    assert broken_links(os.path.join(ROOT, page)) == []


def test_github_anchors():
    assert github_slug("What each figure is fitted on, and how its interval is computed") == (
        "what-each-figure-is-fitted-on-and-how-its-interval-is-computed"
    )
    assert github_slug("Grading new photographs (`eval.py --images`)") == (
        "grading-new-photographs-evalpy---images"
    )
    assert github_slug("model_throughput.py: our EfficientNet vs keras.applications") == (
        "model_throughputpy-our-efficientnet-vs-kerasapplications"
    )
    page = "# Results\n\n```\n# not a heading\n```\n## Results\n### Résultats\nSetext\n---\n"
    assert heading_anchors(page) == {"results", "results-1", "résultats", "setext"}


def test_a_broken_link_is_caught(tmp_path):
    (tmp_path / "b.md").write_text("# A heading\n\n## Twice\n\n## Twice\n", encoding="utf-8")
    page = tmp_path / "a.md"
    page.write_text(
        "[ok](b.md#a%2Dheading) [ok](b.md#twice-1) [ok](#top) [ok](https://x.org/y.md#z)\n"
        "# Top\n```\n[in code](missing.md)\n```\n`[in a span](missing.md)`\n"
        "[bad](b.md#twice-2) [bad](c.md) [bad](#nowhere) ![bad](pic.png) [bad](../../out.md)\n"
        "[ref]: b.md#no-such\n",
        encoding="utf-8",
    )
    assert broken_links(str(page), root=str(tmp_path)) == [
        "b.md#twice-2: no heading of b.md has it",
        "c.md: no such file",
        "#nowhere: no heading of a.md has it",
        "pic.png: no such file",
        "../../out.md: outside the repository",
        "b.md#no-such: no heading of b.md has it",
    ]
