"""Gradient-pass throughput of the optimised attribution vs the naive reference (benchmark 1) and its
cost against the physical bound (benchmark 2), measured side by side on the same rollouts.

    python bench/attribution.py                       # organism, then a random 24-layer hidden-512 Qwen2
    python bench/attribution.py --models organism --prompts 4 --out bench/results/attribution.json

Per model, the alpha = 1 rollouts are sampled once; every variant then scores those same trajectories:

- naive: ``ipg.reference`` -- one (trajectory, alpha) row at a time, a full forward each (all blocks,
  logits at every position), one site per pass;
- optimised, unbatched: ``shard_scores`` with a budget of one row per micro-batch (what the captured
  prefix and sites sharing it buy alone);
- optimised, whole sequences: the default budget (pad-aware micro-batches on top), every row running
  its whole sequence (``share_prefix`` off);
- optimised: all of it: each prompt's positions before the path (0..L-2) run once per prompt, and each
  row runs from its last prompt token on.

Throughput is trajectory tokens (prompt + completion, each trajectory counted once per site) per
second of the gradient pass. Bound, per site: q forward+backward passes of the blocks above the site
(plain HF forward with those blocks only, inputs_embeds = the site's activations, logits of the
generated positions) over the same trajectories, q rows each, in the same budget; ratio = optimised time for
that site alone / bound, with and without the shared prompt prefix (the bound runs whole sequences:
the prefix lets the optimised pass do less work than it, so its ratio can fall below 1). Every optimised score
is checked against the naive one (max |diff| / max |score|). Timings are the best of ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from record import measured_on, run_options  # bench/record.py

MODELS = {  # name -> prompts, layers, max_new_tokens (the default workload of each)
    "organism": (8, (1, 2), 128),
    "24x512": (2, (12, 18), 64),
}


def best(fn, repeat: int):
    out, times = None, []
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return out, min(times)


def bound_seconds(model, site, rollouts, cfg, repeat: int) -> float:
    """q forward+backward passes of the blocks above ``site`` (plain HF forward with those blocks only,
    inputs_embeds = the site's activations, logits of the generated positions) for every trajectory with
    a non-zero advantage: q rows per trajectory, longest first, in ``cfg.budget`` batches (the
    geometry of the optimised pass, so batching efficiency is the same on both sides)."""
    from ipg.components import capture_sites, decoder_layers
    from ipg.gradient_pass import _micro_batches, _policy_logprobs, _Row, positions_mask

    trajs = [
        (s.prompt_ids + s.completion_ids, len(s.prompt_ids), a)
        for r in rollouts
        for s, a in zip(r.samples, r.advantages)
        if a != 0
    ]
    trajs.sort(key=lambda t: -len(t[0]))
    acts = [capture_sites(model, [site], [ids])[site]["h"][0] for ids, _, _ in trajs]  # not timed
    rows = [_Row(i, 0, 1.0, 1.0) for i in range(len(trajs)) for _ in range(cfg.q)]
    inputs = []
    for batch in (
        [r.traj for r in b]
        for b in _micro_batches(rows, [len(t[0]) for t in trajs], cfg.budget(next(model.parameters()).device))
    ):
        width = len(trajs[batch[0]][0])
        ids = torch.tensor([trajs[i][0] + [0] * (width - len(trajs[i][0])) for i in batch])
        h = torch.stack([torch.nn.functional.pad(acts[i], (0, 0, 0, width - acts[i].shape[0])) for i in batch])
        targets = torch.stack([positions_mask(trajs[i][1], len(trajs[i][0]), width, "generated") for i in batch])
        inputs.append((ids, h, targets, torch.tensor([trajs[i][2] for i in batch])))
    inner = model.model
    layers = decoder_layers(model)

    def run():
        inner.layers = torch.nn.ModuleList(list(layers)[site.layer + 1 :])
        try:
            for ids, h, targets, adv in inputs:
                leaf = h.clone().requires_grad_(True)
                with torch.enable_grad():
                    hidden = inner(inputs_embeds=leaf, use_cache=False).last_hidden_state
                    (adv * _policy_logprobs(model, hidden, ids, targets, cfg.policy_temperature)).sum().backward()
        finally:
            inner.layers = layers

    return best(run, repeat)[1]


def bench_model(name: str, args) -> dict:
    from ipg.attribution import AttributionConfig, sample_rollouts, shard_scores
    from ipg.components import Site
    from ipg.reference import reference_scores
    from ipg.signals import make_signal

    n_prompts, layers, max_new = MODELS[name]
    n_prompts = args.prompts or n_prompts
    if name == "organism":
        from ipg.models import load_model
        from ipg.organism.card import splits

        model, tok = load_model("organism")
        examples, signal = splits()["support"][:n_prompts], make_signal("accuracy")
    else:
        from random_models import build, prompts, varied

        model, tok = build(name)
        examples, signal = prompts(n_prompts), make_signal(varied)
    settings = dict(
        method="ipg", layers=layers, n_samples=args.n, q=args.q, max_new_tokens=max_new, seed=0, completeness=False
    )
    cfg = AttributionConfig(**settings)
    rollouts = sample_rollouts(model, tok, examples, signal, cfg)
    sites = [Site(layer, "residual") for layer in layers]
    zeros = {s: torch.zeros(model.config.hidden_size) for s in sites}
    n_traj = sum(len(r.samples) for r in rollouts)
    tokens = sum(len(s.prompt_ids) + len(s.completion_ids) for r in rollouts for s in r.samples)
    active = sum(a != 0 for r in rollouts for a in r.advantages)
    paths = {s: [(a, w, rollouts) for a, w in cfg.alphas] for s in sites}

    def naive():
        return {s: reference_scores(model, paths[s], s, zeros[s]) for s in sites}

    def optimised(**overrides):
        c = AttributionConfig(**settings, **overrides)
        return lambda: shard_scores(model, tok, rollouts, signal, c, sites, zeros).partial

    ref, t_naive = best(naive, 1 if args.quick_naive else args.repeat)
    scale = max(np.abs(ref[s].mean(0)).max() for s in sites)
    rows = [{"variant": "naive reference", "seconds": t_naive, "max_rel_diff": 0.0}]
    variants = (
        ("optimised, unbatched (1 row per micro-batch)", dict(batch_tokens=1, share_prefix=False)),
        (
            f"optimised, whole sequences (batch_tokens {cfg.budget(next(model.parameters()).device)})",
            dict(share_prefix=False),
        ),
        ("optimised (+ prompt prefix once per prompt)", {}),
    )
    for label, overrides in variants:
        partial, t = best(optimised(**overrides), args.repeat)
        diff = max(np.abs(partial.means(s) - ref[s].mean(0)).max() for s in sites) / scale
        rows.append({"variant": label, "seconds": t, "max_rel_diff": float(diff)})
    for r in rows:
        r["tokens_per_s"] = tokens * len(sites) / r["seconds"]
        r["speedup"] = t_naive / r["seconds"]

    bounds = []
    for s in sites:
        c = AttributionConfig(**{**settings, "layers": (s.layer,)})
        whole = AttributionConfig(**{**settings, "layers": (s.layer,), "share_prefix": False})
        _, t_site = best(lambda c=c, s=s: shard_scores(model, tok, rollouts, signal, c, [s], zeros), args.repeat)
        _, t_whole = best(lambda w=whole, s=s: shard_scores(model, tok, rollouts, signal, w, [s], zeros), args.repeat)
        t_bound = bound_seconds(model, s, rollouts, c, args.repeat)
        bounds.append(
            {
                "site": str(s),
                "optimised_seconds": t_site,
                "whole_sequences_seconds": t_whole,
                "bound_seconds": t_bound,
                "ratio": t_site / t_bound,
                "whole_sequences_ratio": t_whole / t_bound,
            }
        )
    return {
        "model": name,
        "layers": list(layers),
        "n_layers": model.config.num_hidden_layers,
        "hidden": model.config.hidden_size,
        "prompts": n_prompts,
        "trajectories": n_traj,
        "active_trajectories": int(active),
        "trajectory_tokens": tokens,
        "N": args.n,
        "q": args.q,
        "max_new_tokens": max_new,
        "throughput": rows,
        "bound": bounds,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--prompts", type=int, help="prompts per model (default: organism 8, 24x512 2)")
    ap.add_argument("--n", type=int, default=5)
    ap.add_argument("--q", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=2, help="runs per variant; the fastest counts")
    ap.add_argument("--quick-naive", action="store_true", help="time the naive reference once")
    run_options(ap)
    args = ap.parse_args()
    from ipg.files import atomic_write_json

    torch.set_num_threads(args.threads)
    results = []
    for name in args.models:
        res = bench_model(name, args)
        results.append(res)
        print(
            f"\n{name}: {res['n_layers']} layers, hidden {res['hidden']}; attributing layers {res['layers']}; {res['prompts']} prompts "
            f"x N {res['N']} = {res['trajectories']} trajectories ({res['active_trajectories']} with advantage != 0), "
            f"{res['trajectory_tokens']} tokens; q {res['q']}; {args.threads} threads ({platform.machine()})"
        )
        print(f"  {'variant':48s} {'seconds':>8s} {'traj tok/s':>11s} {'vs naive':>9s} {'max|diff|/max|score|':>21s}")
        for r in res["throughput"]:
            print(
                f"  {r['variant']:48s} {r['seconds']:8.2f} {r['tokens_per_s']:11.0f} {r['speedup']:8.2f}x {r['max_rel_diff']:21.1e}"
            )
        print(
            f"  {'site':20s} {'q x fwd+bwd above site s':>25s} {'optimised s':>11s} {'ratio':>6s} {'whole sequences s':>18s} {'ratio':>6s}"
        )
        for b in res["bound"]:
            print(
                f"  {b['site']:20s} {b['bound_seconds']:25.2f} {b['optimised_seconds']:11.2f} {b['ratio']:6.2f} "
                f"{b['whole_sequences_seconds']:18.2f} {b['whole_sequences_ratio']:6.2f}"
            )
    if args.out:
        atomic_write_json(
            args.out,
            {
                **measured_on(),
                "threads": args.threads,
                "results": results,
            },
        )


if __name__ == "__main__":
    main()
