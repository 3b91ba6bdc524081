"""Shared fixtures: the shipped organism (loaded once per session) and a tiny random Qwen2."""

import pytest
import torch

TIERS = ("unit", "ray", "engines", "real", "browser")


def pytest_collection_modifyitems(config, items):
    """Every test belongs to exactly one tier (a module's ``pytestmark``), so ``-m`` selects them all."""
    for item in items:
        tiers = [m.name for m in item.iter_markers() if m.name in TIERS]
        if len(tiers) != 1:
            raise pytest.UsageError(f"{item.nodeid}: needs exactly one tier marker of {TIERS}, has {tiers}")


@pytest.fixture(scope="session")
def organism():
    from ipg.models import load_model

    torch.set_num_threads(2)
    return load_model("organism")


@pytest.fixture(scope="session")
def tiny_random():
    """A random 2-layer Qwen2 with the organism's tokenizer: for shape/plumbing tests, no training."""
    from transformers import Qwen2ForCausalLM

    from ipg.organism.tokenizer import build_tokenizer
    from ipg.organism.train import TrainConfig, model_config

    tok = build_tokenizer()
    torch.manual_seed(0)
    cfg = model_config(
        TrainConfig(num_layers=2, hidden_size=64, num_heads=2, intermediate_size=128),
        len(tok),
        tok.pad_token_id,
        tok.eos_token_id,
    )
    model = Qwen2ForCausalLM(cfg).eval()
    model.requires_grad_(False)
    return model, tok


@pytest.fixture(scope="session")
def local_ray():
    """One local Ray cluster for the session's Ray tests (127.0.0.1 dashboard, token auth on, 2 CPUs)."""
    ray = pytest.importorskip("ray")
    from ipg.cluster.ray_cluster import connect

    info = connect(num_cpus=2)
    yield info
    ray.shutdown()
