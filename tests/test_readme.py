"""Every Python snippet of the README runs, in order, as written (fewer epochs)."""

import pathlib
import re

import pytest

pytestmark = pytest.mark.slow  # end-to-end: run by .ci/run, not by the fast suite

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def snippets():
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_starts_with_the_two_set_up_commands():
    text = README.read_text()
    first_block = re.search(r"```bash\n(.*?)```", text, flags=re.S).group(1).splitlines()
    assert first_block[0].startswith("pip install -e . && keras-kd demo")
    assert first_block[1].startswith('pip install -e ".[test]" && pytest')


def test_readme_snippets_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace = {}
    for code in snippets():
        code = re.sub(r"epochs=\d+", "epochs=1", code)
        exec(compile(code, str(README), "exec"), namespace)  # noqa: S102 - our own README
    assert (tmp_path / "student.tflite").exists()
    assert (tmp_path / "teacher_cache").is_dir()
