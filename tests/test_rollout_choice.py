"""ray.rollout_backend 'auto': vLLM when it is installed and can run the model, else the HF loop, with
the reason (the run's log states it). No engine starts here."""

import importlib.util
import json
import shutil

import pytest

import ipg.driver.orchestration.rollout_choice as choice
from ipg.driver.ray_config import RayConfig
from ipg.models import ORGANISM_PATH

pytestmark = pytest.mark.unit


@pytest.fixture
def vllm_present(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        choice.importlib.util, "find_spec", lambda name, *a: object() if name == "vllm" else real(name, *a)
    )
    monkeypatch.setattr(choice, "_vllm_architectures", lambda: {"Qwen2ForCausalLM", "LlamaForCausalLM"})


def _organism_with(tmp_path, **config):
    path = tmp_path / "model"
    shutil.copytree(ORGANISM_PATH, path)
    cfg = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**cfg, **config}))
    return str(path)


def test_auto_takes_vllm_when_installed_and_the_model_fits(vllm_present):
    backend, why = choice.choose_rollout_backend(str(ORGANISM_PATH), dtype="float32", device="cpu")
    assert backend == "vllm" and "Qwen2ForCausalLM" in why and "CPU" in why


def test_auto_falls_back_to_hf_naming_the_reason(vllm_present, tmp_path, monkeypatch):
    small_heads = _organism_with(tmp_path, head_dim=16)
    backend, why = choice.choose_rollout_backend(small_heads, dtype="float32", device="cpu")
    assert backend == "hf" and "head size 16" in why
    monkeypatch.setattr(choice, "_vllm_architectures", lambda: {"LlamaForCausalLM"})
    assert choice.choose_rollout_backend(str(ORGANISM_PATH), dtype="float32", device="cpu") == (
        "hf",
        "vLLM has no implementation of ['Qwen2ForCausalLM']",
    )
    monkeypatch.setattr(choice.importlib.util, "find_spec", lambda name, *a: None)
    backend, why = choice.choose_rollout_backend(str(ORGANISM_PATH), dtype="float32", device="cpu")
    assert backend == "hf" and why.startswith("vLLM is not installed")


def test_the_config_takes_auto_and_a_run_resolves_it_once():
    from ipg.driver.config import ModelConfig
    from ipg.workers.backends import ROLLOUT_BACKENDS

    auto = RayConfig(rollout_backend="auto")
    assert auto.rollout_backend == "auto"
    with pytest.raises(
        Exception, match=r"rollout_backend: unknown 'fast'; use one of \['hf', 'vllm', 'auto', 'deepspeed'\]"
    ):
        RayConfig(rollout_backend="fast")
    assert list(ROLLOUT_BACKENDS) == ["hf", "vllm", "auto", "deepspeed"]  # the names the message lists come from here
    said = []
    resolved = choice.resolve(auto, ModelConfig(), said.append)
    assert resolved.rollout_backend in ("hf", "vllm") and said == [
        f"rollout backend: {resolved.rollout_backend} (auto: " + said[0].split("(auto: ")[1]
    ]
    hf = RayConfig(rollout_backend="hf")
    assert choice.resolve(hf, ModelConfig(), said.append) is hf and len(said) == 1  # only auto is decided
