"""The documentation: the docs site builds with no warning (a broken link or anchor, a page left out
of the nav, a link out of docs/ fails), and every relative link in README.md leads to a file that exists,
so the README's links into docs/ cannot rot. Both take about a second."""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_docs_site_builds_with_no_warning(tmp_path):
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")  # Material's notice about MkDocs 2 is not a build warning
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"),
                           "--site-dir", str(tmp_path / "site")], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    warnings = [line for line in output.splitlines() if re.match(r"\s*(WARNING|ERROR)\b", line)]
    assert not warnings, "\n".join(warnings)
    assert (tmp_path / "site" / "index.html").is_file()


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading (also MkDocs' for plain headings): lower case, punctuation dropped,
    spaces as hyphens."""
    text = re.sub(r"`|\*\*|\[|\]\([^)]*\)", "", heading).strip().lower()
    return re.sub(r"\s", "-", re.sub(r"[^\w\- ]", "", text))


def _anchors(markdown: str) -> set[str]:
    return {_slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*\s*$", _without_code(markdown), re.M)}


def _without_code(markdown: str) -> str:
    markdown = re.sub(r"^```.*?^```", "", markdown, flags=re.M | re.S)
    return re.sub(r"`[^`\n]*`", "", markdown)


def _relative_links(markdown: str) -> list[str]:
    text = _without_code(markdown)
    targets = re.findall(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", text)
    targets += re.findall(r"^\s*\[[^\]]+\]:\s*(\S+)", text, re.M)  # reference-style definitions
    return [t for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:", t, re.I)]  # http:, https:, mailto:


def test_every_relative_link_in_the_readme_leads_to_a_file_that_exists():
    readme = (ROOT / "README.md").read_text()
    links = _relative_links(readme)
    assert any(link.startswith("docs/") for link in links), "the README links into docs/"
    broken = []
    for link in links:
        path, _, anchor = link.partition("#")
        target = (ROOT / path).resolve() if path else ROOT / "README.md"
        if not target.exists() or ROOT not in target.parents:
            broken.append(f"{link}: no such file in the repository")
        elif anchor and target.suffix == ".md" and anchor not in _anchors(target.read_text()):
            broken.append(f"{link}: {target.relative_to(ROOT)} has no heading with the anchor #{anchor}")
    assert not broken, "README.md links that lead nowhere:\n" + "\n".join(broken)


def test_the_link_checker_sees_links_and_skips_code():
    text = ("See [Tuning](docs/tuning.md#data), ![a chart](docs/images/x.png), [site](https://example.com)\n"
            "and `[not a link](nowhere.md)`.\n```\n[nor this](nowhere.md)\n```\n[ref]: docs/jobs.md\n")
    assert _relative_links(text) == ["docs/tuning.md#data", "docs/images/x.png", "docs/jobs.md"]
    assert _anchors("# The server and its APIs\n## Scoring endpoint: reward models score, never generate\n") == {
        "the-server-and-its-apis", "scoring-endpoint-reward-models-score-never-generate"}
