"""ruff, configured in pyproject.toml: the code passes its lint rules and is formatted as ruff formats it."""

import sys
from pathlib import Path

import pytest
from commands import run  # tests/commands.py

pytestmark = pytest.mark.unit

ROOT = Path(__file__).parents[1]


@pytest.mark.parametrize("command", [["check"], ["format", "--check"]], ids=["check", "format"])
def test_ruff(command):
    pytest.importorskip("ruff", reason="ruff comes with the dev extra (pip install -e '.[dev]')")
    done = run([sys.executable, "-m", "ruff", *command, "--no-cache", ROOT], timeout=300)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
