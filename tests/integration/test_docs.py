"""The documentation's promises that code can check: the README stays short, and every relative link
in it and in docs/ points to a file that exists and, with an #anchor, to a heading of that file."""

import re
from pathlib import Path

from helpers import ROOT

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation other than - and _ dropped, spaces to -."""
    text = re.sub(r"[`*]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    out, fence = set(), False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            fence = not fence
        elif not fence and (m := re.match(r"^#+ (.*)", line)):
            out.add(slug(m.group(1)))
    return out


def test_the_readme_is_a_page_a_researcher_reads():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250


def test_every_relative_link_and_anchor_resolves():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    broken = []
    for page in pages:
        for target in LINK.findall(page.read_text()):
            if re.match(r"^[a-z]+:", target):  # http:, https:, mailto:
                continue
            file, _, anchor = target.partition("#")
            path = (page.parent / file).resolve() if file else page
            if not path.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and path.suffix == ".md" and anchor not in anchors(path):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def test_the_slug_is_githubs():
    assert slug("Does the outer loop learn at 135M?") == "does-the-outer-loop-learn-at-135m"
    assert slug("Batch width, memory and precision") == "batch-width-memory-and-precision"
    assert slug("Many GPUs and many machines: Ray workers") == "many-gpus-and-many-machines-ray-workers"
