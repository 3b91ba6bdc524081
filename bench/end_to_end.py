"""The real-model run config end to end, in one process: its wall time split by stage (rollout, gradient,
baseline statistics, evaluation; run.json ``stages``) against each stage's lower bound.

    python bench/end_to_end.py                                     # deploy/configs/smollm2-135m-instruct.yaml
    python bench/end_to_end.py --set data.n_support=8 --set seeds=[0] --out bench/results/end_to_end.json

A stage's lower bound is its model work at this machine's best measured throughput:
- during the run, hooks count the tokens through every decoder block and through the LM head, by stage
  and by whether gradients were taken. The stage is known from what is running: the decode loop
  (sampled: rollout; greedy: evaluation), the gradient pass (``site_scores``, the per-component path),
  the mean baseline and the experiment's baselines stage (baseline statistics); any other model call
  (selection's magnitudes, cards) counts as other;
- after the run, the seconds per block-token (forward, and forward + backward to the input) and per
  LM-head row are measured on batches of 8 x 128 tokens, the whole model at once;
- bound = block-tokens x seconds per block-token + LM-head rows x seconds per row.
Decode steps run one token per row against a growing cache, slower per token than a batched forward,
so generation bounds are optimistic: a stage at 3x its bound is not necessarily 3x from its best.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from record import measured_on, run_options  # noqa: E402  (bench/record.py)

from ipg.driver.report.stages import STAGES  # noqa: E402


class Counter:
    """Block-tokens and LM-head rows per (stage, with gradients)."""

    def __init__(self):
        self.stage = None
        self.blocks = defaultdict(int)
        self.head = defaultdict(int)

    @contextmanager
    def during(self, stage: str):
        outer, self.stage = self.stage, stage
        try:
            yield
        finally:
            self.stage = outer

    def key(self):
        return (self.stage or "other", torch.is_grad_enabled())

    def install(self, model):
        from ipg.components import decoder_layers

        def block_hook(module, args, kwargs):
            h = args[0] if args else kwargs["hidden_states"]
            self.blocks[self.key()] += h.shape[0] * h.shape[1]

        def head_hook(module, args):
            self.head[self.key()] += args[0].shape[:-1].numel()

        for block in decoder_layers(model):
            block.register_forward_pre_hook(block_hook, with_kwargs=True)
        model.lm_head.register_forward_pre_hook(head_hook)


def wrap(module, name: str, counter: Counter, stage_of):
    fn = getattr(module, name)

    def wrapped(*args, **kwargs):
        with counter.during(stage_of(*args, **kwargs)):
            return fn(*args, **kwargs)

    setattr(module, name, wrapped)


class StagedTimers:
    """The experiment's stage timers, also telling the counter when its baselines stage runs."""

    def __init__(self, timers, counter: Counter):
        self.timers, self.counter = timers, counter

    @property
    def seconds(self):
        return self.timers.seconds

    @contextmanager
    def __call__(self, stage: str):
        with self.timers(stage):
            if stage == "baseline_statistics":
                with self.counter.during("baseline_statistics"):
                    yield
            else:
                yield


def unit_costs(model, tokens: int = 128, rows: int = 8, repeat: int = 3) -> dict:
    """Seconds per block-token (forward; forward + backward to the input) and per LM-head row (no grad;
    forward + backward of log-softmax), best of ``repeat`` on a rows x tokens batch."""
    n_layers = model.config.num_hidden_layers
    ids = torch.randint(3, model.config.vocab_size, (rows, tokens), generator=torch.Generator().manual_seed(0))
    emb = model.model.embed_tokens(ids)

    def best(fn):
        times = []
        for _ in range(repeat):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return min(times)

    def fwd():
        with torch.no_grad():
            model.model(inputs_embeds=emb, use_cache=False)

    def fwd_bwd():
        leaf = emb.detach().requires_grad_(True)
        with torch.enable_grad():
            model.model(inputs_embeds=leaf, use_cache=False).last_hidden_state.sum().backward()

    states = torch.randn(rows * tokens, model.config.hidden_size)

    def head():
        with torch.no_grad():
            torch.log_softmax(model.lm_head(states).float(), -1)

    def head_bwd():
        leaf = states.clone().requires_grad_(True)
        with torch.enable_grad():
            torch.log_softmax(model.lm_head(leaf).float(), -1)[:, 0].sum().backward()

    n = rows * tokens
    return {
        "block_forward": best(fwd) / (n * n_layers),
        "block_forward_backward": best(fwd_bwd) / (n * n_layers),
        "head_forward": best(head) / n,
        "head_forward_backward": best(head_bwd) / n,
        "batch": f"{rows} x {tokens}",
    }


def measure(config: str, overrides: list[str], threads: int, log=print) -> dict:
    """One run of ``config`` with ``overrides`` (``key=value``) in this process: its stages (run.json) and each
    stage's counted tokens and bound."""
    import ipg.attribution
    import ipg.cards
    import ipg.component_path
    import ipg.driver.experiment as experiment
    import ipg.generation
    import ipg.gradient_pass
    from ipg.driver.config import load_config

    torch.set_num_threads(threads)
    counter = Counter()
    patched = []

    def patch(module, name, stage_of):
        patched.append((module, name, getattr(module, name)))
        wrap(module, name, counter, stage_of)

    patch(
        ipg.generation,
        "_decode_loop",
        lambda model, ids, mask, params, *a, **k: "evaluation" if params.greedy else "rollout",
    )
    for module in (ipg.gradient_pass, ipg.attribution):
        patch(module, "site_scores", lambda *a, **k: "gradient")
    patch(ipg.component_path, "component_partial", lambda *a, **k: "gradient")
    patch(ipg.attribution, "site_baselines", lambda *a, **k: "baseline_statistics")
    patch(experiment.Experiment, "_cards", lambda *a, **k: "other")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            cfg = load_config(config, [f"--{s}" for s in overrides] + [f"--out={tmp}/run"])
            exp = experiment.Experiment(cfg, log=log)
            counter.install(exp.model)
            exp.timers = StagedTimers(exp.timers, counter)
            start = time.perf_counter()
            out = exp.run()
            total = time.perf_counter() - start
            run = json.loads((out / "run.json").read_text())
            evals = (out / "eval.parquet").read_bytes()
    finally:
        for module, name, fn in reversed(patched):
            setattr(module, name, fn)
    costs = unit_costs(exp.model)
    stages = run["stages"]
    rows = []
    for stage in STAGES:
        bound = sum(
            n * costs["block_forward_backward" if grad else "block_forward"]
            for (s, grad), n in counter.blocks.items()
            if s == stage
        )
        bound += sum(
            n * costs["head_forward_backward" if grad else "head_forward"]
            for (s, grad), n in counter.head.items()
            if s == stage
        )
        blocks = {("grad" if g else "no_grad"): n for (s, g), n in counter.blocks.items() if s == stage}
        rows.append(
            {
                "stage": stage,
                "seconds": stages[stage],
                "bound_seconds": round(bound, 2),
                "block_tokens": blocks,
                "ratio": round(stages[stage] / bound, 2) if bound else None,
            }
        )
    bounds = sum(r["bound_seconds"] for r in rows)
    return {
        "model": cfg.model.name,
        "stages": stages,
        "unit_costs": costs,
        "rows": rows,
        "timed_stages_seconds": round(sum(r["seconds"] for r in rows if r["stage"] != "other"), 2),
        "sum_of_bounds": round(bounds, 2),
        "wall_over_bounds": round(stages["wall"] / bounds, 2),
        "seconds_with_setup": round(total, 1),
        "eval_parquet": evals,
    }


def print_stages(result: dict, threads: int) -> None:
    stages = result["stages"]
    print(
        f"\n{result['model']}: wall {stages['wall']:.0f} s ({result['seconds_with_setup']:.0f} s with model set-up); "
        f"{threads} threads, {platform.machine()}"
    )
    print(f"  {'stage':20s} {'seconds':>8s} {'bound s':>8s} {'ratio':>6s}")
    for r in result["rows"]:
        print(
            f"  {r['stage']:20s} {r['seconds']:8.1f} {r['bound_seconds']:8.1f} {r['ratio'] if r['ratio'] is not None else '-':>6}"
        )
    print(
        f"  {'wall vs sum of bounds':20s} {stages['wall']:8.1f} {result['sum_of_bounds']:8.1f} {result['wall_over_bounds']:6.2f}"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(ROOT / "deploy" / "configs" / "smollm2-135m-instruct.yaml"))
    ap.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="config overrides, as ipg run's --key=value"
    )
    run_options(ap)
    args = ap.parse_args()

    from ipg.files import atomic_write_json

    result = measure(args.config, args.set, args.threads, log=lambda m: print(m, flush=True))
    result.pop("eval_parquet")
    print_stages(result, args.threads)
    if args.out:
        atomic_write_json(
            args.out,
            {
                "bench": "end_to_end",
                **measured_on(),
                "threads": args.threads,
                "config": os.path.relpath(args.config, ROOT),
                "overrides": args.set,
                **result,
            },
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
