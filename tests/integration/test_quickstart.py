"""The README's Python quick start runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from crmbet.config import Settings

pytestmark = pytest.mark.integration
README = Path(__file__).resolve().parents[2] / "README.md"


def _quick_start() -> str:
    text = README.read_text()
    section = text.split("## Python API", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_quick_start_runs(
    settings: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    exec(compile(_quick_start(), str(README), "exec"), {"__name__": "__quickstart__"})
    output = capsys.readouterr().out.splitlines()
    assert (tmp_path / ".crmbet" / "mlflow.db").exists()
    k, names = output[0].split(" ", 1)
    assert 3 <= int(k) <= 12
    assert "'" in names
    assert output[-2].split() == ["100", "1.0"]
    assert float(output[-1]) > 0
