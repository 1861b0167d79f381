"""The README's "In your own code" examples run as written (in order, sharing one namespace)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def blocks() -> list[str]:
    text = README.read_text()
    section = text.split("## In your own code", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_readme_section_has_examples() -> None:
    assert len(blocks()) >= 5


def test_readme_examples_run(tmp_path, monkeypatch) -> None:
    pytest.importorskip("tensorboard")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for i, code in enumerate(blocks()):
        exec(compile(code, f"README.md block {i + 1}", "exec"), namespace)  # noqa: S102 - our own README
    assert (tmp_path / "lenet5-r8" / "model.safetensors").exists() and any((tmp_path / "tb" / "readme").iterdir())
