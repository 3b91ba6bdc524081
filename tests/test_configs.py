"""The shipped run configs parse with known keys only and ask for consistent resources. The real-model
configs cannot run here (no weights, no GPU); their shapes are checked against the models' published sizes."""

from pathlib import Path

import pytest

from ipg.driver.config import RunConfig, load_config

pytestmark = pytest.mark.unit

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "deploy" / "configs").glob("*.yaml"))
# published shapes: (decoder layers, hidden size)
SHAPES = {
    "Qwen/Qwen2.5-Math-1.5B-Instruct": (28, 1536),
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B": (28, 1536),
    "meta-llama/Llama-3.1-8B-Instruct": (32, 4096),
    "organism": (4, 128),
    "smollm2-135m-instruct": (30, 576),
}
CPU_MODELS = ("organism", "smollm2-135m-instruct")  # configs that run on 2 CPU cores


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_config_parses_and_is_consistent(path):
    cfg = load_config(str(path))  # unknown keys or bad values raise, naming the dotted key
    n_layers, hidden = SHAPES[cfg.model.name]
    layers = set(cfg.attribution.layers) | set(cfg.length.layers) | set(cfg.reflection.layers)
    assert max(layers) < n_layers and min(layers) >= 0
    assert max(cfg.evaluation.p) <= hidden and cfg.length.p <= hidden and cfg.stability.p <= hidden
    r = cfg.ray
    if r.gpus_per_actor > 0:
        assert cfg.model.device == "cuda" and r.vllm.tensor_parallel_size <= max(1, int(r.gpus_per_actor)) * 1
    if r.rollout_backend == "vllm":
        assert r.vllm.enforce_eager and not r.vllm.enable_prefix_caching  # steering inside vLLM needs both
    if r.gradient_backend == "deepspeed":
        assert r.deepspeed.ranks >= 2 and r.gpus_per_actor >= 1
    if cfg.model.name != "organism":  # the paper's sampling settings
        a = cfg.attribution
        assert (a.n_samples, a.q, a.temperature, a.top_p) == (5, 10, 0.6, 0.8)
        assert cfg.model.name in CPU_MODELS or (r.active() and r.gpus_needed() >= 1)
        assert cfg.data.fields == {"prompt": "question"} and cfg.data.reference == "gsm8k"  # published GSM8K layout
        # late layers, by depth as the paper chooses them (its 20-26 of 28 and 22-28 of 32: from ~0.69 of the depth)
        assert min(cfg.attribution.layers) >= 0.65 * n_layers and max(cfg.attribution.layers) < n_layers


def test_paper_layers_and_engines():
    by_name = {p.stem: load_config(str(p)) for p in CONFIGS}
    for name in ("qwen2.5-math-1.5b-instruct", "deepseek-r1-distill-qwen-1.5b"):
        assert by_name[name].attribution.layers == tuple(range(20, 27)) and by_name[name].ray.rollout_backend == "vllm"
    llama = by_name["llama-3.1-8b-instruct"]
    assert llama.attribution.layers == tuple(range(22, 29)) and llama.ray.gradient_backend == "deepspeed"
    assert llama.ray.gpus_needed() == 3  # 1 vLLM rollout GPU + a ZeRO-3 group of 2
    assert by_name["organism"] == RunConfig()
