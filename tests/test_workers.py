"""The worker classes (plain, no Ray) sharded over prompts give the in-process attribution exactly."""

import numpy as np
import pytest
import torch

from ipg.attribution import AttributionConfig, attribute, score_meta
from ipg.components import Site
from ipg.organism.card import splits
from ipg.workers.gradient import GradientWorker
from ipg.workers.reducer import Reducer
from ipg.workers.rollout import RolloutWorker

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("n_shards, resample", [(1, False), (3, False), (2, True)])
def test_sharded_workers_equal_in_process_attribution(organism, tmp_path, n_shards, resample):
    model, tok = organism
    examples = splits()["support"][:9]
    settings = dict(
        method="ipg", layers=(1, 2), q=3, n_samples=4, max_new_tokens=96, seed=5, resample=resample, completeness=False
    )
    reference = attribute(model, tok, examples, signal="accuracy", **settings)
    cfg = AttributionConfig(**settings)
    rollout_worker, gradient_worker = RolloutWorker("organism"), GradientWorker("organism")
    baselines = {Site(layer, "residual"): torch.zeros(128) for layer in cfg.layers}  # zero baseline: shard-free
    reducer = Reducer(tmp_path, score_meta(model, "accuracy", cfg), snapshot_every=2)
    shards = [examples[i::n_shards] for i in range(n_shards)]  # interleaved: each shard mixes prompts
    for k, shard in enumerate(shards):
        rollouts = rollout_worker.generate(f"s{k}", shard, cfg, "accuracy")
        table = gradient_worker.attribute(f"s{k}", rollouts, cfg, "accuracy", baselines)
        reducer.merge(f"s{k}", table)
    ours = reducer.finalize()
    ref = np.array(reference.table.column("score").to_pylist())
    got = np.array(ours.column("score").to_pylist())
    assert np.abs(ref).max() > 0
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-7 * np.abs(ref).max())
    assert ours.column("n_prompts").to_pylist() == reference.table.column("n_prompts").to_pylist()


def test_a_shard_costs_the_rows_the_gradient_pass_runs():
    """The dispatch order's cost: tokens from the last prompt token on of trajectories with A != 0."""
    from ipg.attribution import Rollout
    from ipg.generation import Sample
    from ipg.workers.sampling import ShardRollouts

    def sample(n_prompt, n_completion):
        return Sample("e", 0, [1] * n_prompt, [2] * n_completion, "")

    mixed = Rollout({"id": "a"}, [sample(9, 4), sample(9, 6), sample(9, 1)], [1.0, 0.0, 1.0], [0.5, 0.5, -1.0])
    solved = Rollout({"id": "b"}, [sample(3, 50), sample(3, 70)], [1.0, 1.0], [0.0, 0.0])  # no gradient work
    assert ShardRollouts("s", [mixed, solved]).cost == (4 + 1) + (6 + 1) + (1 + 1)
    assert ShardRollouts("s", [solved]).cost == 0
