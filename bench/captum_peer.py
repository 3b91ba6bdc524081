"""ipg against the peer researchers reach for, captum's ``LayerIntegratedGradients``, on a real model
(SmolLM2-135M-Instruct, chat template), the same trajectories, measured side by side in one run.

    python bench/captum_peer.py                               # layers 22 and 26 of 30, 16 prompts, N 5, q 10
    python bench/captum_peer.py --prompts 8 --out bench/results/captum_peer.json

Both sides compute the same quantity: per prompt, (1/N) sum_n sum_k (1/q) sum_t (h - h')_t * d[A_n log
pi(tau_n)]/dh_t at h' + (k/q)(h - h'), a right Riemann sum with q steps along the straight line from
the zero baseline h' at the decision positions (the prompt's last token up to the one before the last
generated token); positions before them keep their values. PG is the same with q = 1.

captum's side, written as a careful user would:
- the forward function returns A_n log pi(tau_n) per row, with the LM head run on the generated
  positions only (not on the prompt's);
- only the trajectories with a non-zero advantage are passed (the others score zero);
- the zero baseline at the decision positions comes from a gate inside the attributed block, which
  the baseline inputs close (``LayerIntegratedGradients`` builds its layer baseline from input-space
  baselines, and a zero embedding would not give a zero residual);
- PG (q = 1; captum's Riemann sums need 2 steps or more): ``LayerGradientXActivation`` on the path;
- one call per layer: the layers of one call must not feed each other, and residual layers do;
- at its best batching, tried per run: trajectories in groups of similar length, all q steps of a
  group in one pass (``internal_batch_size`` = group x q).

Every setting's scores are checked for equality (max |diff| / max |score| <= 1e-4, asserted here) on a
float64 copy of the model over the first ``--check-prompts`` prompts: in float32, sums of
advantage-weighted terms that nearly cancel move by about 1e-4 between two correct orders of summation,
so the timed float32 runs' differences are reported, not asserted.
Timings are the best of ``--repeat`` runs, after one untimed warm-up pass of each side; captum's
batching is chosen among ``--groups`` on the first setting and kept for the others.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from record import measured_on, run_options  # bench/record.py

NAME = "smollm2-135m-instruct"
DATA = Path(__file__).resolve().parents[1] / "deploy" / "data" / "arithmetic" / "support.jsonl"
TOLERANCE = 1e-4


class _Gated(torch.nn.Module):
    """A decoder block whose output is multiplied by ``gate`` (rows, T, 1), set before each forward:
    ones for the inputs, zero at the decision positions for the baseline."""

    def __init__(self, block: torch.nn.Module):
        super().__init__()
        self.block = block
        self.gate = None
        if hasattr(block, "attention_type"):
            self.attention_type = block.attention_type

    def forward(self, *args, **kwargs):
        out = self.block(*args, **kwargs)
        if isinstance(out, tuple):
            return (out[0] * self.gate, *out[1:])
        return out * self.gate


def workload(args):
    """(model, tokenizer, alpha = 1 rollouts, signal): the support prompts with the chat template, N
    samples each (the attribution settings of the real-model run config)."""
    from ipg.attribution_config import AttributionConfig
    from ipg.data import load_examples
    from ipg.models import load_model, model_context
    from ipg.prompts import format_examples
    from ipg.rollouts import prepare_examples, sample_rollouts
    from ipg.signals import make_signal

    model, tok = load_model(NAME)
    raw = load_examples(DATA, ("prompt", "answer"), fields={"prompt": "question"}, reference="gsm8k")[: args.prompts]
    examples = format_examples(
        tok, prepare_examples(raw), context=model_context(model), max_new_tokens=args.max_new_tokens
    )
    signal = make_signal("accuracy", formats=["hash", "boxed", "answer_is", "last_number"])
    cfg = AttributionConfig(
        method="ipg",
        layers=tuple(args.layers),
        n_samples=args.n,
        q=args.q,
        max_new_tokens=args.max_new_tokens,
        temperature=0.6,
        top_p=0.8,
        seed=args.seed,
        completeness=False,
    )
    return model, tok, sample_rollouts(model, tok, examples, signal, cfg), signal


def captum_scores(model, rollouts, layer: int, q: int, positions: str, group: int) -> np.ndarray:
    """Per-prompt scores (prompts, hidden) at ``layer``'s residual output by LayerIntegratedGradients (q >=
    2) or LayerGradientXActivation (q = 1)."""
    from captum.attr import LayerGradientXActivation, LayerIntegratedGradients

    from ipg.gradient_pass import positions_mask  # the path's positions: the definition both sides share

    trajs = [
        (p, s.prompt_ids + s.completion_ids, len(s.prompt_ids), a, len(r.samples))
        for p, r in enumerate(rollouts)
        for s, a in zip(r.samples, r.advantages)
        if a != 0
    ]
    trajs.sort(key=lambda t: -len(t[1]))
    layers = model.model.layers
    block = layers[layer]
    gated = _Gated(block)

    def forward(ids, gate, pred, adv):
        """A_n log pi(tau_n) per row; ``pred``: the positions whose next token was generated."""
        gated.gate = gate
        hidden = model.model(input_ids=ids, use_cache=False).last_hidden_state
        logits = model.lm_head(hidden[pred])
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        token_lp = torch.log_softmax(logits, -1).gather(-1, ids.roll(-1, 1)[pred][:, None])[:, 0]
        row = torch.arange(ids.shape[0])[:, None].expand_as(pred)[pred]
        return adv * torch.zeros(ids.shape[0], dtype=token_lp.dtype).index_add(0, row, token_lp)

    out = np.zeros((len(rollouts), model.config.hidden_size))
    layers[layer] = gated
    try:
        lig = LayerIntegratedGradients(forward, gated)
        gxa = LayerGradientXActivation(forward, gated)
        for g in range(0, len(trajs), group):
            batch = trajs[g : g + group]
            width = len(batch[0][1])
            ids = torch.tensor([t[1] + [0] * (width - len(t[1])) for t in batch])
            path = torch.stack([positions_mask(t[2], len(t[1]), width, positions) for t in batch])
            pred = torch.stack([positions_mask(t[2], len(t[1]), width, "generated") for t in batch])
            adv = torch.tensor([t[3] for t in batch], dtype=torch.promote_types(model.dtype, torch.float32))
            ones = torch.ones(len(batch), width, 1)
            if q == 1:  # PG: the gradient at the activations themselves, times them, on the path
                attr = gxa.attribute((ids, ones), additional_forward_args=(pred, adv)) * path[..., None]
            else:
                attr = lig.attribute(
                    (ids, ones),
                    baselines=(ids, (~path).float()[..., None]),
                    additional_forward_args=(pred, adv),
                    n_steps=q,
                    method="riemann_right",
                    internal_batch_size=len(batch) * q,
                )
            attr = attr[0] if isinstance(attr, tuple) else attr
            per_traj = attr.detach().double().sum(1).numpy()  # (rows, hidden)
            for t, row in zip(batch, per_traj):
                out[t[0]] += row / t[4]
    finally:
        layers[layer] = block
        gated.gate = None
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, nargs="+", default=[22, 26], help="the upper quarter of the 30 blocks")
    ap.add_argument("--prompts", type=int, default=16, help="support prompts of the workload")
    ap.add_argument("--n", type=int, default=5, help="samples per prompt")
    ap.add_argument("--q", type=int, default=10, help="alpha steps of the path")
    ap.add_argument("--max-new-tokens", type=int, default=64, help="tokens per sampled trajectory")
    ap.add_argument("--positions", nargs="+", default=["generated"], choices=["generated", "all"])
    ap.add_argument(
        "--groups", type=int, nargs="+", default=[2, 8, 30], help="captum batchings tried: trajectories per call"
    )
    ap.add_argument("--seed", type=int, default=0, help="sampling seed")
    ap.add_argument("--check-prompts", type=int, default=4, help="prompts of the float64 equality check")
    ap.add_argument("--repeat", type=int, default=1, help="timed runs per setting (the fastest is kept)")
    run_options(ap)
    args = ap.parse_args()
    import captum
    from attribution import best as timed  # bench/attribution.py: (result, fastest seconds) of repeated runs

    from ipg.attribution import shard_scores
    from ipg.attribution_config import AttributionConfig
    from ipg.components import Site
    from ipg.files import atomic_write_json

    torch.set_num_threads(args.threads)
    model, tok, rollouts, signal = workload(args)
    model64 = copy.deepcopy(model).double()
    active = sum(a != 0 for r in rollouts for a in r.advantages)
    tokens = [
        len(s.prompt_ids) + len(s.completion_ids) for r in rollouts for s, a in zip(r.samples, r.advantages) if a != 0
    ]
    gen = [len(s.completion_ids) for r in rollouts for s, a in zip(r.samples, r.advantages) if a != 0]
    print(
        f"{NAME}: {len(rollouts)} prompts x N {args.n}: {active} trajectories with advantage != 0, mean {np.mean(tokens):.0f} "
        f"tokens ({np.mean(gen):.0f} generated); captum {captum.__version__}, torch {torch.__version__}, {args.threads} threads",
        flush=True,
    )
    rows, best_g = [], None
    warm = rollouts[:2]  # one untimed pass of each side first (allocator, kernels)
    sites = [Site(layer, "residual") for layer in args.layers]
    shard_scores(
        model,
        tok,
        warm,
        signal,
        AttributionConfig(method="ipg", layers=tuple(args.layers), q=2, completeness=False),
        sites,
        {s: torch.zeros(model.config.hidden_size) for s in sites},
    )
    captum_scores(model, warm, args.layers[0], 2, "generated", 2)
    for positions in args.positions:
        for method, q in (("ipg", args.q), ("pg", 1)):
            for layers in [[layer] for layer in args.layers] + ([args.layers] if len(args.layers) > 1 else []):
                sites = [Site(layer, "residual") for layer in layers]
                cfg = AttributionConfig(
                    layers=tuple(layers),
                    n_samples=args.n,
                    q=q,
                    method=method,
                    positions=positions,
                    max_new_tokens=args.max_new_tokens,
                    seed=args.seed,
                    completeness=False,
                )
                zeros = {s: torch.zeros(model.config.hidden_size) for s in sites}
                partial, t_ipg = timed(
                    lambda cfg=cfg, sites=sites, zeros=zeros: (
                        shard_scores(model, tok, rollouts, signal, cfg, sites, zeros).partial
                    ),
                    args.repeat,
                )
                best_c, ref = float("inf"), None
                for g in args.groups if best_g is None else [best_g]:  # the batching is chosen on the first setting
                    scores, t_c = timed(
                        lambda q=q, positions=positions, g=g, sites=sites: {
                            s: captum_scores(model, rollouts, s.layer, q, positions, g) for s in sites
                        },
                        args.repeat,
                    )
                    print(f"    captum, groups of {g}: {t_c:.2f} s", flush=True)
                    if t_c < best_c:
                        best_c, chosen, ref = t_c, g, scores
                best_g = chosen
                diff = max(
                    float(np.abs(partial.means(s) - ref[s].mean(0)).max() / np.abs(ref[s].mean(0)).max()) for s in sites
                )
                row = {
                    "positions": positions,
                    "method": method,
                    "q": q,
                    "layers": layers,
                    "ipg_seconds": t_ipg,
                    "captum_seconds": best_c,
                    "captum_group": chosen,
                    "ratio": best_c / t_ipg,
                    "max_rel_diff": diff,
                }
                rows.append(row)
                print(
                    f"  {positions:9s} {method:3s} q {q:2d} layers {str(layers):9s} ipg {t_ipg:7.2f} s  captum {best_c:7.2f} s "
                    f"(groups of {chosen})  captum/ipg {row['ratio']:5.2f}x  max|diff|/max|score| {diff:.1e}",
                    flush=True,
                )
                # the same quantity? asserted on a float64 copy, where rounding cannot hide a difference (in
                # float32, sums of advantage-weighted terms that nearly cancel differ by ~1e-4 between two
                # correct orders of summation)
                check = rollouts[: args.check_prompts]
                ipg64 = shard_scores(
                    model64, tok, check, signal, cfg, sites, {s: z.double() for s, z in zeros.items()}
                ).partial
                diff64 = max(
                    float(
                        np.abs(
                            ipg64.means(s) - captum_scores(model64, check, s.layer, q, positions, chosen).mean(0)
                        ).max()
                        / np.abs(ipg64.means(s)).max()
                    )
                    for s in sites
                )
                row["max_rel_diff_float64"] = diff64
                print(f"    float64 check on {len(check)} prompts: max|diff|/max|score| {diff64:.1e}", flush=True)
                assert diff64 <= TOLERANCE, f"captum and ipg disagree: {diff64:.2e} > {TOLERANCE}"
    if args.out:
        atomic_write_json(
            args.out,
            {
                **measured_on(),
                "threads": args.threads,
                "model": NAME,
                "captum": captum.__version__,
                "torch": torch.__version__,
                "prompts": len(rollouts),
                "N": args.n,
                "max_new_tokens": args.max_new_tokens,
                "active_trajectories": int(active),
                "mean_tokens": float(np.mean(tokens)),
                "mean_generated": float(np.mean(gen)),
                "rows": rows,
            },
        )


if __name__ == "__main__":
    main()
