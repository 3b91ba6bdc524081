"""Packed evaluation in the HF loop: per-row steering of every kind equals one pass per variant, finished
rows leaving the batch change nothing, packing keeps to its budget, and a run's eval tables are the same
packed or not."""

import pyarrow.parquet as pq
import pytest
import torch

from ipg.components import ComponentId
from ipg.errors import InputError
from ipg.generation import SamplingParams, generate, generate_batch
from ipg.organism.card import splits
from ipg.packing import Job, generate_packed, pack
from ipg.steering import add_vector, per_row, scale

pytestmark = pytest.mark.unit

EVAL = splits()["eval"][:20]


def _ids(groups):
    return [[s.completion_ids for s in g] for g in groups]


def _components(kind, layer, n, width, seed=0):
    idx = torch.randperm(width, generator=torch.Generator().manual_seed(seed))[:n].tolist()
    return [ComponentId(layer, kind, i) for i in idx]


@pytest.fixture(scope="module")
def saes():
    from ipg.workers.rollout import load_saes

    return load_saes({2: "ipg/organism/saes/layer2.safetensors"})


def _variants():
    """One variant of every kind an experiment evaluates (residual, MLP, SAE, control vector), two on one
    site with different gammas, and none."""
    vector = torch.randn(128, generator=torch.Generator().manual_seed(2))
    return [
        None,
        {"scale": _components("residual", 2, 24, 128), "gamma": 0.0},
        {"scale": _components("residual", 2, 24, 128), "gamma": 3.0},
        {"scale": _components("mlp", 1, 384, 512, seed=1), "gamma": 0.0},
        {"scale": _components("sae", 2, 24, 256), "gamma": 3.0},
        {"add": 1, "vector": vector, "coefficient": 2.0},
        # about the mean, and a step along it (ipg.interventions), on the site another variant scales
        {"scale": _components("residual", 2, 24, 128), "gamma": 0.5, "intervention": "mean", "centre": _centre(24)},
        {"scale": _components("sae", 2, 24, 256), "gamma": 2.0, "intervention": "add", "centre": _centre(24, 1)},
    ]


def _centre(n, seed=0):
    return torch.randn(n, generator=torch.Generator().manual_seed(10 + seed)).tolist()


def _separately(model, tok, variant, params, saes, batch_size):
    if variant is None:
        return generate(model, tok, EVAL, params, batch_size=batch_size)
    ctx = (
        scale(
            model,
            variant["scale"],
            variant["gamma"],
            saes=saes,
            intervention=variant.get("intervention", "scale"),
            centre=variant.get("centre"),
        )
        if "scale" in variant
        else add_vector(model, variant["add"], variant["vector"], variant["coefficient"])
    )
    with ctx:
        return generate(model, tok, EVAL, params, batch_size=batch_size)


@pytest.mark.parametrize(
    "params",
    [SamplingParams(max_new_tokens=64), SamplingParams(n=2, greedy=False, max_new_tokens=48, seed=4)],
    ids=["greedy", "sampled"],
)
def test_rows_steered_by_their_own_variants_equal_a_pass_per_variant(organism, saes, params):
    model, tok = organism
    variants = _variants()
    separate = [_ids(_separately(model, tok, v, params, saes, batch_size=8)) for v in variants]
    lines, finished = [], []
    packed = generate_packed(
        model,
        tok,
        [Job(EVAL, v) for v in variants],
        params,
        batch_size=8,
        pack_tokens=10**6,
        saes=saes,
        log=lines.append,
        done=lambda k, samples: finished.append(k),
    )
    assert [_ids(g) for g in packed] == separate
    assert sum(s != separate[0] for s in separate[1:]) >= 4  # the variants really steer
    # 20 prompts x n in batches of 8 rows: each group of equal rows is one packed batch of all the variants
    assert len(lines) == len(range(0, 20 * params.n, 8)) and f"rows of {len(variants)} evaluations" in lines[0]
    assert sorted(finished) == list(range(len(variants)))
    assert _ids(generate(model, tok, EVAL, params, batch_size=8)) == separate[0]  # hooks removed


def test_finished_rows_leave_the_batch_without_changing_any_row(organism):
    model, tok = organism
    params = SamplingParams(max_new_tokens=96)
    sizes = []
    rows = [(ex, 0) for ex in EVAL]
    batched = generate_batch(model, tok, rows, params, on_rows=lambda live: sizes.append(len(live)))
    alone = [generate_batch(model, tok, [row], params)[0] for row in rows]
    assert [s.completion_ids for s in batched] == [s.completion_ids for s in alone]
    assert max(abs(a - b) for x, y in zip(batched, alone) for a, b in zip(x.logprobs, y.logprobs)) < 1e-4
    assert sizes[0] == 20 and len(sizes) > 2 and sizes == sorted(sizes, reverse=True) and sizes[-1] < 20


def test_per_row_tables_leave_unsteered_rows_bit_identical(organism):
    model, tok = organism
    ids = torch.tensor([tok(EVAL[0]["prompt"])["input_ids"]] * 2)
    with torch.no_grad():
        plain = model(input_ids=ids).logits
        with per_row(
            model, [None, {"scale": _components("residual", 1, 8, 128), "gamma": 0.0}], positions="all"
        ) as rows:
            rows(torch.tensor([0, 1]))
            mixed = model(input_ids=ids).logits
    assert torch.equal(mixed[0], plain[0]) and not torch.equal(mixed[1], plain[1])


def test_packing_stacks_batches_of_the_same_prompts_within_the_token_budget(organism):
    _, tok = organism
    params = SamplingParams(max_new_tokens=50)
    jobs = [Job(EVAL, None), Job(EVAL, None), Job(EVAL[:5], None), Job(EVAL, None)]
    batches = pack(jobs, params, tok, batch_size=8, pack_tokens=3 * 8 * 70)
    for chunks in batches:
        assert len({tuple((ex["id"], j) for ex, j in c.rows) for c in chunks}) == 1  # one padding per batch
        width = max(len(tok(ex["prompt"])["input_ids"]) for ex, _ in chunks[0].rows)
        assert len(chunks) == 1 or sum(len(c.rows) for c in chunks) * (width + 50) <= 3 * 8 * 70
    assert sorted((c.job, c.rows[0][0]["id"]) for b in batches for c in b) == sorted(
        (k, job.examples[s]["id"]) for k, job in enumerate(jobs) for s in range(0, len(job.examples), 8)
    )
    with pytest.raises(InputError, match="duplicate id"):
        generate_packed(None, tok, [Job(EVAL + EVAL[:1], None)], params, batch_size=8, pack_tokens=1000)
    from ipg.driver.config import load_config

    with pytest.raises(InputError, match="pack_tokens: must be >= 0"):
        load_config(None, ["--evaluation.pack_tokens=-1"])


def test_a_packed_run_files_the_eval_tables_of_one_pass_per_evaluation(tmp_path):
    from ipg.driver.config import load_config
    from ipg.driver.experiment import run_experiment

    overrides = [
        "--baselines.methods=[ipg,random,activation,control_vector]",
        "--length.enabled=true",
        "--length.layers=[2]",
        "--length.gammas=[0, 1, 2]",
        "--length.methods=[random, ipg]",
        "--data.n_eval=16",
    ]
    runs = {
        pack: run_experiment(
            load_config(
                "deploy/configs/smoke.yaml",
                overrides + [f"--out={tmp_path / str(pack)}", f"--evaluation.pack_tokens={pack}"],
            ),
            log=lambda m: None,
        )
        for pack in (0, 65536)
    }
    for name in ("eval", "eval_items"):
        assert pq.read_table(runs[65536] / f"{name}.parquet").equals(pq.read_table(runs[0] / f"{name}.parquet")), name
