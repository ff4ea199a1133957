"""The README and the documentation pages: their set-up commands, links, and
every Python block run as written.

The blocks are collected by Sybil (the `test` extra), which parses Markdown
fences and runs each page's blocks in order in one namespace, reporting the
page and line of a failure. `epochs=N` is lowered to 1 and nothing else is
changed; the blocks write into a temporary folder.
"""

import pathlib
import re

import pytest
from sybil import Sybil
from sybil.evaluators.python import pad
from sybil.parsers.markdown import CodeBlockParser

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = sorted((ROOT / "docs").glob("*.md"))
WITH_CODE = [page for page in [README, *PAGES] if "```python\n" in page.read_text()]


def run_with_fewer_epochs(example):
    """Sybil's Python evaluator, with `epochs=N` lowered to `epochs=1`."""
    source = re.sub(r"\bepochs=\d+", "epochs=1", example.parsed)
    code = compile(pad(source, example.line + example.parsed.line_offset), example.path, "exec")
    exec(code, example.namespace)  # noqa: S102 - our own documentation


SYBIL = Sybil(parsers=[CodeBlockParser(language="python", evaluator=run_with_fewer_epochs)])


def test_readme_starts_with_the_two_set_up_commands():
    first_block = re.search(r"```bash\n(.*?)```", README.read_text(), flags=re.S).group(1).splitlines()
    assert first_block[0].startswith('pip install -e ".[demo]" && keras-kd demo ')
    assert first_block[1].startswith('pip install -e ".[test]" && pytest ')


def test_readme_stays_short():
    assert len(README.read_text().splitlines()) <= 200


def test_every_page_is_in_the_site_and_every_readme_link_exists():
    nav = re.findall(r"^\s+- [^:]+: (\S+\.md)$", (ROOT / "mkdocs.yml").read_text(), flags=re.M)
    assert sorted(nav) == sorted(page.name for page in PAGES)
    links = re.findall(r"\]\(((?:docs|benchmarks)/[^)#]+|BENCHMARKS\.md)[)#]", README.read_text())
    assert len(links) >= 14
    for link in links:
        assert (ROOT / link).is_file(), link


@pytest.mark.slow
@pytest.mark.parametrize("page", WITH_CODE, ids=lambda page: page.name)
def test_every_python_block_runs(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    examples = list(SYBIL.parse(page))
    assert len(examples) == page.read_text().count("```python\n")
    for example in examples:
        example.evaluate()
