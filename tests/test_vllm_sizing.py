"""Sizing a vLLM engine before it starts: the KV cache on CPU from the weights, the context and the batch;
the GPU share; one error naming the setting when it cannot fit. No vLLM needed."""

import pytest

from ipg.driver.config import RayConfig, VLLMConfig
from ipg.errors import InputError
from ipg.models import load_model, resolve_model_path
from ipg.workers import vllm_sizing as vs
from ipg.workers.vllm_sizing import GiB, ModelShape, cpu_plan, gpu_plan, model_shape, plan

pytestmark = pytest.mark.unit

# SmolLM2-135M-Instruct's shape: 30 blocks, 3 KV heads of 64, float32, 134.5M parameters, 8192 context
SMOL = ModelShape(layers=30, kv_heads=3, head_dim=64, context=8192, value_bytes=4, weights_bytes=134_515_008 * 4)
PER_TOKEN = 2 * 30 * 3 * 64 * 4  # 46,080 bytes


def test_shape_is_read_from_the_checkpoint_without_loading_it():
    shape = model_shape(resolve_model_path("organism"), "float32")
    model, _ = load_model("organism")
    assert (shape.layers, shape.kv_heads, shape.head_dim, shape.context) == (4, 4, 32, 256)
    assert shape.weights_bytes == 4 * sum(p.numel() for p in model.parameters())  # tied embeddings counted once
    assert model_shape(resolve_model_path("organism"), "bfloat16").weights_bytes == shape.weights_bytes // 2
    assert shape.kv_bytes_per_token() == 2 * 4 * 4 * 32 * 4
    assert (
        shape.kv_bytes_per_token(tensor_parallel_size=8) == 2 * 4 * 1 * 32 * 4
    )  # fewer KV heads than ranks: replicated
    with pytest.raises(InputError, match=r"ray\.vllm\.dtype: 'int3' is not a dtype vLLM runs"):
        model_shape(resolve_model_path("organism"), "int3")


def test_cpu_cache_holds_the_batch_at_the_runs_context_and_prefills_whole():
    p = cpu_plan(SMOL, max_model_len=416, available=20 * GiB)
    assert p.args["kv_cache_memory_bytes"] == PER_TOKEN * 416 * vs.CPU_MAX_NUM_SEQS  # 1.14 GiB: all 64 at once
    assert p.args["max_model_len"] == 416 and p.args["max_num_seqs"] == 64
    assert p.args["enable_chunked_prefill"] is False and p.args["max_num_batched_tokens"] == 4096
    assert "KV cache 1.14 GiB" in p.summary and "45.0 KiB" in p.summary
    # a context longer than the step budget: the budget grows to hold one whole prompt
    assert cpu_plan(SMOL, max_model_len=8192, max_num_seqs=1, available=20 * GiB).args["max_num_batched_tokens"] == 8192


def test_cpu_cache_is_capped_by_the_free_memory_and_the_ceiling_but_holds_one_sequence():
    # the model's whole context for 64 sequences would be 22.5 GiB: the 4 GiB ceiling
    assert cpu_plan(SMOL, available=20 * GiB).args["kv_cache_memory_bytes"] == vs.CPU_CEILING
    # little free memory: half of what is left after weights and overhead
    small = cpu_plan(SMOL, max_model_len=2048, available=3 * GiB).args["kv_cache_memory_bytes"]
    assert small == int((3 * GiB - SMOL.weights_bytes - vs.CPU_OVERHEAD) * vs.CPU_SHARE)
    # half is less than one sequence, all of it is not: one sequence
    one = cpu_plan(SMOL, max_model_len=8192, available=int(1.9 * GiB))
    assert one.args["kv_cache_memory_bytes"] == PER_TOKEN * 8192


def test_cpu_errors_name_the_setting_and_the_numbers():
    with pytest.raises(
        InputError,
        match=r"^ray\.vllm\.max_model_len: one sequence of 8192 tokens needs 0\.35 GiB of KV cache "
        r"\(45\.0 KiB per token\), but this node has 1\.60 GiB free; the weights take 0\.50 "
        r"GiB .*lower ray\.vllm\.max_model_len, set ray\.vllm\.kv_cache_gib",
    ):
        cpu_plan(SMOL, max_model_len=8192, available=int(1.6 * GiB))
    with pytest.raises(InputError, match=r"^ray\.vllm\.max_model_len: 9000 tokens exceeds the model's context of 8192"):
        cpu_plan(SMOL, max_model_len=9000, available=20 * GiB)
    with pytest.raises(
        InputError,
        match=r"^ray\.vllm\.kv_cache_gib: 0\.01 GiB holds 233 tokens, less than one sequence of "
        r"ray\.vllm\.max_model_len=512",
    ):
        cpu_plan(SMOL, max_model_len=512, kv_cache_gib=0.01, available=20 * GiB)
    with pytest.raises(InputError, match=r"^ray\.vllm\.kv_cache_gib: 30 GiB per rank does not fit"):
        cpu_plan(SMOL, kv_cache_gib=30, available=20 * GiB)
    with pytest.raises(
        InputError, match=r"^ray\.vllm\.kv_cache_gib: set either it or ray\.vllm\.gpu_memory_utilization"
    ):
        plan(resolve_model_path("organism"), dtype="float32", cuda=False, kv_cache_gib=1, gpu_memory_utilization=0.5)


def test_unset_context_takes_what_fits_and_an_explicit_size_is_used_as_given():
    # the whole 8192 does not fit one sequence in 0.2 GiB of room: the context shrinks to what does
    p = cpu_plan(SMOL, available=SMOL.weights_bytes + vs.CPU_OVERHEAD + int(0.2 * GiB))
    assert p.args["max_model_len"] == int(0.2 * GiB) // PER_TOKEN // 16 * 16 == 4656
    q = cpu_plan(SMOL, kv_cache_gib=0.5, available=20 * GiB)
    assert q.args["kv_cache_memory_bytes"] == GiB // 2 and q.args["max_model_len"] == 8192
    r = cpu_plan(SMOL, kv_cache_gib=0.1, available=20 * GiB)
    assert r.args["max_model_len"] == int(0.1 * GiB) // PER_TOKEN // 16 * 16  # unset: as much as the size holds


def test_gpu_takes_its_share_of_the_device(monkeypatch):
    assert gpu_plan().args["gpu_memory_utilization"] == 0.9
    assert gpu_plan(gpu_share=0.5).args["gpu_memory_utilization"] == 0.45  # an engine beside a gradient actor
    assert gpu_plan(gpu_share=0.5, gpu_memory_utilization=0.3).args["gpu_memory_utilization"] == 0.3
    assert gpu_plan(kv_cache_gib=2).args == {
        "max_model_len": None,
        "max_num_seqs": None,
        "kv_cache_memory_bytes": 2 * GiB,
    }
    # the legacy variable on CPU: vLLM's own sizing, but still whole prefills
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "2")
    p = plan(resolve_model_path("organism"), dtype="float32", cuda=False)
    assert "kv_cache_memory_bytes" not in p.args and p.args["enable_chunked_prefill"] is False


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("kv_cache_gib", 0, "kv_cache_gib: must be > 0 GiB"),
        ("max_num_seqs", 0, "max_num_seqs: must be >= 1"),
        ("max_model_len", 8, "max_model_len: must be >= 16 tokens"),
    ],
)
def test_config_checks_values(field, value, message):
    with pytest.raises(InputError, match=message):
        VLLMConfig(**{field: value})
    with pytest.raises(InputError, match="kv_cache_gib: set either it or gpu_memory_utilization"):
        RayConfig(vllm=VLLMConfig(kv_cache_gib=1, gpu_memory_utilization=0.5))


def test_a_session_refuses_engine_settings_before_starting_anything():
    from ipg.driver.orchestration.pipeline import RaySession

    cfg = RayConfig(enabled=True, rollout_backend="vllm", vllm=VLLMConfig(max_model_len=1000))
    with pytest.raises(InputError, match=r"^ray\.vllm\.max_model_len: 1000 tokens exceeds the model's context of 256"):
        RaySession("organism", cfg)  # no cluster needed: refused before connecting
