"""Integrated Policy Gradient attribution in one process (docs/method.md).

For a prompt x with N trajectories, each with advantage A_n, and a site with activations h (its
decision positions P), baseline h' and schedule {(alpha_k, w_k)}:

    IPG(i; x) = sum_k w_k (1/N) sum_n sum_{t in P} (h_ti - h'_ti) g^(n,k)_ti
    g^(n,k)   = d/dx [ A_n sum_{t generated} log pi(a_t | s_t) ]  at x = h' + alpha_k (h - h') on P

Full autograd from the site to every later token. The blocks below the site are run once per
trajectory (capture pass) and replaced by stand-ins that emit the interpolated tensor, so each
(alpha, trajectory) row costs a forward/backward of the blocks from the site up only; and with
positions 'generated', of the positions from the last prompt token on only (the prompt before it is
the same in every row of a prompt: its keys/values run once per prompt, ``ipg.prefix``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

import numpy as np
import torch

from ipg.advantages import ADVANTAGES, advantages
from ipg.components import POSITIONS, Site, capture_sites, check_site, decoder_layers, edit, site_activations
from ipg.errors import ExampleError, InputError
from ipg.generation import Sample, SamplingParams, generate
from ipg.paths import BASELINES, METHODS, SCHEDULES, schedule
from ipg.prompts import PromptFormat, format_examples
from ipg.scores import PartialScores
from ipg.signals import Signal, make_signal


_AUTOCAST = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class AttributionConfig:
    """Settings of one attribution; validated on construction (errors name the field)."""

    layers: tuple[int, ...] = (1,)
    kind: str = "residual"
    n_samples: int = 5
    q: int = 10
    schedule: str = "uniform"
    baseline: str = "zero"
    advantage: str = "grpo"
    method: str = "ipg"  # ipg (the path integral), pg (its alpha = 1 term), component (the per-component path)
    candidates: int = 32  # method 'component': PG's top this-many components per site are re-scored
    resample: bool = False
    positions: str = "generated"
    temperature: float = 0.6
    top_p: float = 0.8
    max_new_tokens: int = 128
    seed: int = 0
    policy_temperature: float = 1.0  # log pi of the gradient: the model's own policy (the paper's)
    batch_tokens: int = 0  # micro-batch budget: rows x padded length per forward/backward; 0: by device (see budget)
    generation_batch_size: int = 64
    autocast: str = "off"  # gradient pass in 'bf16'/'fp16' autocast (GPU speed; scores differ by the precision)
    checkpoint: bool = False  # activation checkpointing of the blocks above the site (long trajectories, less memory)
    share_prefix: bool = True  # positions 'generated': the prompt's keys/values run once per prompt, not once per row
    completeness: bool = True
    on_error: str = "fail"  # an example whose signal fails: 'fail' the run naming it, or 'skip' it and count it

    def __post_init__(self):
        checks = [
            ("kind", self.kind in ("residual", "mlp", "sae"), "one of ['residual', 'mlp', 'sae']"),
            ("schedule", self.schedule in SCHEDULES, f"one of {list(SCHEDULES)}"),
            ("baseline", self.baseline in BASELINES, f"one of {list(BASELINES)}"),
            ("advantage", self.advantage in ADVANTAGES, f"one of {list(ADVANTAGES)}"),
            ("method", self.method in METHODS, f"one of {list(METHODS)}"),
            ("candidates", isinstance(self.candidates, int) and self.candidates >= 1, "an integer >= 1"),
            ("positions", self.positions in POSITIONS, f"one of {list(POSITIONS)}"),
            ("n_samples", self.n_samples >= 1, "an integer >= 1"),
            ("q", self.q >= 1, "an integer >= 1"),
            ("layers", len(self.layers) > 0 and len(set(self.layers)) == len(self.layers), "a non-empty list of distinct layer indices"),
            ("policy_temperature", self.policy_temperature > 0, "> 0"),
            ("batch_tokens", isinstance(self.batch_tokens, int) and self.batch_tokens >= 0,
             "an integer >= 1, or 0 to size it by device (CPU 2048, GPU 8192)"),
            ("on_error", self.on_error in ("fail", "skip"), "'fail' or 'skip'"),
            ("autocast", self.autocast in _AUTOCAST, f"one of {list(_AUTOCAST)}"),
            ("checkpoint", isinstance(self.checkpoint, bool), "true or false"),
            ("share_prefix", isinstance(self.share_prefix, bool), "true or false"),
        ]
        for name, ok, want in checks:
            if not ok:
                raise InputError(f"{name}: got {getattr(self, name)!r}; must be {want}")
        self.sampling()  # validates temperature, top_p, max_new_tokens

    def sampling(self, seed: int | None = None) -> SamplingParams:
        return SamplingParams(n=self.n_samples, greedy=False, temperature=self.temperature, top_p=self.top_p,
                              max_new_tokens=self.max_new_tokens, seed=self.seed if seed is None else seed)

    def budget(self, device) -> int:
        """Micro-batch budget in padded tokens: ``batch_tokens``, or by device when it is 0. On CPU a
        micro-batch's activations should stay near the caches: measured on 2 cores, the organism's
        gradient pass takes 6.7 s at 2048 and 8.9 s at 8192 (two processes at once: 4.0 vs 5.1 s), a
        24-layer hidden-512 model the same time at both; GPUs want bigger batches."""
        if self.batch_tokens:
            return self.batch_tokens
        return 2048 if torch.device(device).type == "cpu" else 8192

    @property
    def alphas(self) -> list[tuple[float, float]]:
        return schedule(self.schedule, self.q, self.method)


@dataclass
class Rollout:
    """One prompt's group of trajectories, scored."""

    example: dict
    samples: list[Sample]
    rewards: list[float]
    advantages: list[float]


def _alpha_seed(seed: int, alpha: float) -> int:
    """Sampling seed at a path point: alpha = 1 uses the run seed; other points get their own draws."""
    if alpha == 1.0:
        return seed
    return int.from_bytes(hashlib.sha256(f"{seed}/alpha/{alpha!r}".encode()).digest()[:7], "little")


def _interpolation(baseline: torch.Tensor, alpha: float):
    return lambda h: baseline.to(h.dtype) + alpha * (h - baseline.to(h.dtype))


def sample_rollouts(model, tokenizer, examples: list[dict], signal: Signal, cfg: AttributionConfig, *,
                    site: Site | None = None, alpha: float = 1.0, baseline: torch.Tensor | None = None,
                    saes: dict | None = None, skipped: dict[str, str] | None = None, engine=None) -> list[Rollout]:
    """N trajectories per example from the model with the site on the path at ``alpha`` (alpha = 1:
    the unmodified model), scored by the signal, with per-group advantages.

    ``engine``: another sampler of the same weights (the vLLM backend) with ``generate(examples, params)``
    and ``interpolate(site, alpha, baseline, positions, saes)`` (a context manager); None: our HF loop.
    An example whose signal fails raises ExampleError (``cfg.on_error`` 'fail'), or ('skip') is left
    out and recorded in ``skipped`` (example id -> error)."""
    params = cfg.sampling(_alpha_seed(cfg.seed, alpha))
    ctx = nullcontext()
    if site is not None and alpha != 1.0:
        ctx = (engine.interpolate(site, alpha, baseline, cfg.positions, saes) if engine is not None else
               edit(model, site, _interpolation(baseline, alpha), positions=cfg.positions, saes=saes))
    with ctx:
        groups = (engine.generate(examples, params) if engine is not None else
                  generate(model, tokenizer, examples, params, batch_size=cfg.generation_batch_size))
    out = []
    for ex, samples in zip(examples, groups):
        try:
            rewards = _rewards(signal, ex, samples)
        except ExampleError as e:
            if cfg.on_error == "fail" or skipped is None:
                raise
            skipped[ex["id"]] = str(e)
            continue
        out.append(Rollout(ex, samples, rewards, advantages(rewards, cfg.advantage)))
    return out


def _rewards(signal: Signal, ex: dict, samples: list[Sample]) -> list[float]:
    try:
        rewards = [float(r) for r in signal([s.text for s in samples], [ex] * len(samples), [s.n_tokens for s in samples])]
    except Exception as e:  # a user signal or reward model failing on one example: name it
        raise ExampleError(ex["id"], f"signal '{signal.name}' failed on example '{ex['id']}': {type(e).__name__}: {e}") from e
    for j, r in enumerate(rewards):
        if not np.isfinite(r):
            raise ExampleError(ex["id"], f"signal '{signal.name}': reward {r} for example '{ex['id']}' sample {j} is not finite; a signal must return finite floats")
    return rewards


# ---------------------------------------------------------------------------------------------------
# the gradient pass


class _BlockWrapper(torch.nn.Module):
    """Takes a decoder block's place in ``model.model.layers`` (keeping its ``attention_type``, which
    the model reads to pick each block's attention mask)."""

    def __init__(self, block: torch.nn.Module):
        super().__init__()
        if hasattr(block, "attention_type"):
            self.attention_type = block.attention_type


class _StandIn(_BlockWrapper):
    """Replaces a decoder block: passes its input through, or emits a fixed tensor."""

    def __init__(self, block: torch.nn.Module, value: torch.Tensor | None):
        super().__init__(block)
        self.value = value

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states if self.value is None else self.value


class _Checkpointed(_BlockWrapper):
    """Runs the block under non-reentrant activation checkpointing (recomputed in the backward pass)."""

    def __init__(self, block: torch.nn.Module):
        super().__init__(block)
        self.block = block

    def forward(self, *args, **kwargs):
        from torch.utils.checkpoint import checkpoint

        return checkpoint(self.block, *args, use_reentrant=False, **kwargs)


@contextmanager
def _swapped_blocks(model, make: dict[int, Callable[[torch.nn.Module], torch.nn.Module]]):
    """Block i is replaced by ``make[i](block)`` for the body; the originals are restored on exit."""
    layers = decoder_layers(model)
    originals = {i: layers[i] for i in make}
    try:
        for i, fn in make.items():
            layers[i] = fn(originals[i])
        yield
    finally:
        for i, block in originals.items():
            layers[i] = block


def _skip_blocks(model, upto: int, value: torch.Tensor):
    """Skip blocks 0..upto-1; block upto-1 emits ``value`` (B, T, hidden). Restored on exit."""
    return _swapped_blocks(model, {i: (lambda b, i=i: _StandIn(b, value if i == upto - 1 else None)) for i in range(upto)})


def _checkpointed(model, start: int, enabled: bool):
    """Blocks ``start``.. recompute their activations in the backward pass instead of storing them."""
    return _swapped_blocks(model, {i: _Checkpointed for i in range(start, len(decoder_layers(model)))} if enabled else {})


def _positions_mask(prompt_len: int, total_len: int, width: int, positions: str) -> torch.Tensor:
    """(width,) bool: the positions on the path. generated: L-1 .. L+T-2 (decision positions)."""
    mask = torch.zeros(width, dtype=torch.bool)
    if positions == "all":
        mask[:total_len] = True
    else:
        mask[prompt_len - 1 : total_len - 1] = True
    return mask


def _at_least_float32(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _policy_logprobs(model, hidden: torch.Tensor, ids: torch.Tensor, target_mask: torch.Tensor, temperature: float):
    """Sum of log pi(a_t | s_t) per row over ``target_mask`` positions; hidden (R, T, d) after the
    final norm. Only the masked positions go through the LM head."""
    logits = _at_least_float32(model.lm_head(hidden[:, :-1][target_mask[:, :-1]]))  # (N_gen, V)
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    logp = torch.log_softmax(logits / temperature, dim=-1)
    targets = ids[:, 1:][target_mask[:, :-1]]  # (N_gen,)
    token_lp = logp.gather(-1, targets[:, None])[:, 0]
    row = torch.arange(ids.shape[0], device=ids.device)[:, None].expand_as(ids)[:, :-1][target_mask[:, :-1]]
    return torch.zeros(ids.shape[0], dtype=token_lp.dtype, device=ids.device).index_add(0, row, token_lp)


@dataclass
class _Trajectory:
    ids: list[int]
    prompt_len: int
    advantage: float


@dataclass
class _Row:
    traj: int
    prompt: int
    alpha: float
    weight: float  # w_k / N


def _chunks(order: list[int], lengths: list[int], budget: int) -> list[list[int]]:
    """Trajectories (longest first) in groups whose padded size (count x longest) fits the budget."""
    out: list[list[int]] = []
    for t in order:
        if out and (len(out[-1]) + 1) * lengths[out[-1][0]] <= budget:
            out[-1].append(t)
        else:
            out.append([t])
    return out


def _micro_batches(rows: list[_Row], lengths: list[int], budget: int, prefix_lens: list[int] | None = None):
    """Consecutive rows in batches of at most ``budget`` padded tokens (rows x the longest row); a
    batch's rows share one prefix length (``prefix_lens[traj]``) when given."""
    batch: list[_Row] = []
    width = 0
    for r in rows:
        w = max(width, lengths[r.traj])
        if batch and ((len(batch) + 1) * w > budget or (prefix_lens and prefix_lens[r.traj] != prefix_lens[batch[0].traj])):
            yield batch
            batch, w = [], lengths[r.traj]
        batch.append(r)
        width = w
    if batch:
        yield batch


def _autocast(cfg: AttributionConfig, device: torch.device):
    dtype = _AUTOCAST[cfg.autocast]
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def site_scores(model, sites: list[Site], trajectories: list[_Trajectory], rows: list[_Row], n_prompts: int,
                baselines: dict[Site, torch.Tensor], cfg: AttributionConfig, saes: dict | None = None,
                agree=None) -> dict[Site, np.ndarray]:
    """Per-prompt IPG scores ``{site: (n_prompts, width)}`` of sites that share the same (trajectory,
    alpha) rows.

    Trajectories go longest first in chunks under ``cfg.budget``. Each chunk gets one no-grad
    forward that captures every site and stops at the highest (the shared prefix: blocks below a site
    run once per trajectory, not once per alpha and not once per site). Then the chunk's rows (each
    trajectory's q alphas adjacent, so a micro-batch pads little) run, micro-batch by micro-batch and
    site by site, forward/backward from the site up only, and from the first path position on
    (``SharedPrefixes``: the prompt before it runs once).

    ``agree``: set on a rank of a ZeRO-3 group, whose ranks must make the same sequence of forward and
    backward calls (each block's parameters are gathered collectively). ``agree(n)`` returns the max of
    n over the ranks; a rank with fewer chunks or micro-batches pads with a dummy trajectory of
    advantage 0, whose contribution is zero, and captures run whole forwards."""
    from ipg.prefix import SharedPrefixes  # imports transformers

    widths = {site: check_site(model, site, saes) for site in sites}
    device = next(model.parameters()).device
    out = {site: np.zeros((n_prompts, widths[site]), dtype=np.float64) for site in sites}
    rows = [r for r in rows if trajectories[r.traj].advantage != 0.0]  # zero advantage: zero gradient
    trajs = list(trajectories) + ([_Trajectory([0, 0], 1, 0.0)] if agree is not None else [])
    dummy = len(trajs) - 1
    lengths = [len(t.ids) for t in trajs]
    prefixes = SharedPrefixes(model, enabled=agree is None and cfg.share_prefix and cfg.positions == "generated")
    prefix_lens = [prefixes.length(t) for t in trajs]
    order = sorted({r.traj for r in rows}, key=lambda t: (-prefix_lens[t], -lengths[t], t))
    rank = {t: i for i, t in enumerate(order)}
    budget = cfg.budget(device)
    chunks = _chunks(order, lengths, budget)
    b = {site: baselines[site].to(device) for site in sites}
    n_chunks = agree(len(chunks)) if agree is not None else len(chunks)
    for c in range(n_chunks):
        chunk = chunks[c] if c < len(chunks) else []
        if agree is not None:
            chunk = chunk + [dummy]  # padding micro-batches below need the dummy's activations
        captured = capture_sites(model, sites, [trajs[t].ids for t in chunk], saes, stop_early=agree is None)
        in_chunk = set(chunk)
        chunk_rows = sorted((r for r in rows if r.traj in in_chunk), key=lambda r: (rank[r.traj], r.alpha))
        acts = {site: {t: {k: v[i] for k, v in captured[site].items()} for i, t in enumerate(chunk)} for site in sites}
        batches = list(_micro_batches(chunk_rows, lengths, budget, prefix_lens))  # the same for every site
        n_batches = agree(len(batches)) if agree is not None else len(batches)
        for i in range(n_batches):
            batch = batches[i] if i < len(batches) else [_Row(dummy, 0, 1.0, 0.0)]
            past = prefixes.cache([trajs[r.traj] for r in batch])  # one micro-batch's prefix at a time, for every site
            for site in sites:
                contrib = _batch_contributions(model, site, saes, batch, trajs, acts[site], b[site], cfg, device, past)
                for r, c_r in zip(batch, contrib):
                    if r.weight:
                        out[site][r.prompt] += r.weight * c_r
    return out


@contextmanager
def from_site(model, site: Site, sae, x: torch.Tensor, h: torch.Tensor, padded, cfg: AttributionConfig):
    """While the body runs, a forward of the model skips the blocks below the site and uses ``x`` (R, T,
    width) for the site's components, whose captured values are ``h``. ``padded(key)`` gives the captured
    block input (MLP sites) or residual (SAE sites) in the rows' layout. A backward pass must run inside
    the body too: checkpointed blocks recompute their forward then."""
    if site.kind == "mlp":
        ctx_skip = _skip_blocks(model, site.layer, padded("block_input")) if site.layer > 0 else nullcontext()
        ctx_edit = edit(model, site, lambda _: x, positions="all")
        first_run = site.layer
    else:
        emitted = x if sae is None else padded("residual") + sae.decode_delta(x - h).to(h.dtype)
        ctx_skip, ctx_edit = _skip_blocks(model, site.layer + 1, emitted), nullcontext()
        first_run = site.layer + 1
    with ctx_skip, ctx_edit, _checkpointed(model, first_run, cfg.checkpoint and torch.is_grad_enabled()), _autocast(cfg, x.device):
        yield


def policy_logprobs(model, ids: torch.Tensor, targets: torch.Tensor, cfg: AttributionConfig, past=None) -> torch.Tensor:
    """Sum of log pi over ``targets`` per row of ``ids`` (a forward of the whole model)."""
    hidden = model.model(input_ids=ids, past_key_values=past, use_cache=False).last_hidden_state  # (R, T, d)
    return _policy_logprobs(model, hidden, ids, targets, cfg.policy_temperature)


@dataclass
class TrajectoryAtSite:
    """One trajectory with its site values captured once, for passes of R rows from the site up, each row
    replacing the site's values (the per-component path, the component cards)."""

    ids: list[int]
    acts: dict[str, torch.Tensor]  # "h" (T, width), plus "block_input" (MLP) or "residual" (SAE) sites
    on_path: torch.Tensor  # (T,) bool: the path positions
    targets: torch.Tensor  # (T,) bool: the states that predict generated tokens

    @classmethod
    def capture(cls, model, site: Site, sample: Sample, cfg: AttributionConfig, saes: dict | None = None):
        ids = sample.prompt_ids + sample.completion_ids
        T, L = len(ids), len(sample.prompt_ids)
        device = next(model.parameters()).device
        acts = {k: v[0] for k, v in capture_sites(model, [site], [ids], saes)[site].items()}
        return cls(ids, acts, _positions_mask(L, T, T, cfg.positions).to(device),
                   _positions_mask(L, T, T, "generated").to(device))

    @property
    def h(self) -> torch.Tensor:
        return self.acts["h"]

    @contextmanager
    def rows(self, model, site: Site, x: torch.Tensor, cfg: AttributionConfig, saes: dict | None = None):
        """Yields log pi of the trajectory for each row of ``x`` (R, T, width); a backward pass belongs
        inside the body (``from_site``)."""
        R = x.shape[0]
        sae = (saes or {}).get(site.layer) if site.kind == "sae" else None

        def padded(key):
            return self.acts[key][None].expand(R, *self.acts[key].shape) if key in self.acts else None

        ids = torch.tensor([self.ids] * R, device=x.device)
        with from_site(model, site, sae, x, self.h[None].expand(R, *self.h.shape), padded, cfg):
            yield policy_logprobs(model, ids, self.targets[None].expand(R, -1), cfg)


def _batch_contributions(model, site, saes, batch: list[_Row], trajectories, acts, b, cfg, device, past=None) -> np.ndarray:
    """(R, width): sum over path positions of (h - h') * grad for each row. ``past``: the rows' shared
    prompt prefix (keys/values of positions 0..P-1 in every block); the rows then run positions P.. only."""
    sae = (saes or {}).get(site.layer) if site.kind == "sae" else None
    width = max(len(trajectories[r.traj].ids) for r in batch)
    start = past.get_seq_length() if past is not None else 0

    def padded(key):  # (R, T, d) from per-trajectory (T_full, d) tensors, cropped/padded to width, from start
        return torch.stack([acts[r.traj][key][start:width] for r in batch]) if key in acts[batch[0].traj] else None

    ids = torch.tensor([trajectories[r.traj].ids + [0] * (width - len(trajectories[r.traj].ids)) for r in batch], device=device)[:, start:]
    on_path = torch.stack([_positions_mask(trajectories[r.traj].prompt_len, len(trajectories[r.traj].ids), width, cfg.positions)
                           for r in batch]).to(device)[:, start:]  # (R, T)
    targets = torch.stack([_positions_mask(trajectories[r.traj].prompt_len, len(trajectories[r.traj].ids), width, "generated")
                           for r in batch]).to(device)[:, start:]  # (R, T): states that predict generated tokens
    h = padded("h")  # residual: block output (R, T, hidden); mlp: down_proj input (R, T, inter); sae: features
    b = b.to(h.dtype)  # a bf16 model's path stays bf16 (the baseline is kept in float32)
    alpha = torch.tensor([r.alpha for r in batch], device=device, dtype=h.dtype)[:, None, None]
    leaf = (b + alpha * (h - b)).detach().requires_grad_(True)
    x = torch.where(on_path[..., None], leaf, h)
    adv = torch.tensor([trajectories[r.traj].advantage for r in batch], device=device, dtype=torch.float32)

    with torch.enable_grad(), from_site(model, site, sae, x, h, padded, cfg):
        logp = policy_logprobs(model, ids, targets, cfg, past)  # (R,)
        (adv * logp).sum().backward()
    grad = leaf.grad  # (R, T, width_site)
    delta = _at_least_float32(h - b) * on_path[..., None]
    return (delta * _at_least_float32(grad)).sum(1).double().cpu().numpy()  # summed over positions in float32 at least


# ---------------------------------------------------------------------------------------------------
# the public entry point


@dataclass
class Attribution:
    """Result of ``attribute``: the score table (Arrow), the mergeable partial sums, diagnostics."""

    table: object  # pyarrow.Table, schema ipg.scores.SCHEMA
    partial: PartialScores
    diagnostics: dict
    config: AttributionConfig
    baselines: dict[Site, torch.Tensor] = field(default_factory=dict)
    rollouts: list[Rollout] = field(default_factory=list)  # the alpha = 1 rollouts (support trajectories)
    widths: dict[Site, int] = field(default_factory=dict)  # components per site

    def to_pandas(self):
        return self.table.to_pandas()

    def scores(self, layer: int, kind: str | None = None) -> np.ndarray:
        """Mean score per component of the site (NaN for components method 'component' did not score)."""
        site = Site(layer, kind or self.config.kind)
        return self.partial.means(site, self.widths.get(site))


def site_baselines(model, rollouts: list[Rollout], sites: list[Site], cfg: AttributionConfig, saes=None) -> dict[Site, torch.Tensor]:
    """Baseline vector per site: zeros, or the mean activation over the path positions of the rollouts."""
    out = {}
    for site in sites:
        if cfg.baseline == "zero":
            out[site] = torch.zeros(check_site(model, site, saes))
            continue
        total, count = activation_sums(model, rollouts, site, cfg, saes)
        out[site] = (total / max(count, 1)).float()
    return out


def activation_sums(model, rollouts: list[Rollout], site: Site, cfg: AttributionConfig, saes=None,
                    agree=None) -> tuple[torch.Tensor, int]:
    """Sum (float64) and count of a site's activations over the path positions of the rollouts: the
    mergeable pieces of the mean baseline (a distributed run adds them over shards). ``agree``: a ZeRO-3
    rank's lockstep (one sequence per forward, padded to the group's largest count with a dummy)."""
    total, count = torch.zeros(check_site(model, site, saes), dtype=torch.float64), 0
    sequences = [(s.prompt_ids + s.completion_ids, len(s.prompt_ids)) for r in rollouts for s in r.samples]
    if agree is not None:
        n = len(sequences)
        sequences = sequences + [([0, 0], 1)] * (agree(n) - n)
        pieces = (x for seq in sequences for x in site_activations(model, site, [seq], saes=saes, stop_early=False))
        pieces = (x for i, x in enumerate(pieces) if i < n)
    else:
        pieces = site_activations(model, site, sequences, saes=saes, batch_tokens=cfg.budget(next(model.parameters()).device))
    for ids, prompt_len, h in pieces:
        mask = _positions_mask(prompt_len, len(ids), len(ids), cfg.positions)
        total += h[mask].double().sum(0)
        count += int(mask.sum())
    return total, count


def rows_for(rollouts_by_alpha: list[tuple[float, float, list[Rollout]]]) -> tuple[list[_Trajectory], list[_Row]]:
    """Trajectories and (trajectory, alpha, weight) rows: each schedule point's rollouts at that alpha."""
    trajectories, rows, index = [], [], {}
    for alpha, weight, rollouts in rollouts_by_alpha:
        for p, r in enumerate(rollouts):
            for s, a in zip(r.samples, r.advantages):
                key = (id(r), s.sample_index)
                if key not in index:
                    index[key] = len(trajectories)
                    trajectories.append(_Trajectory(s.prompt_ids + s.completion_ids, len(s.prompt_ids), a))
                rows.append(_Row(index[key], p, alpha, weight / len(r.samples)))
    return trajectories, rows


class ShardScores(NamedTuple):
    partial: PartialScores
    paths: dict  # site -> [(alpha, weight, rollouts)]
    timings: dict[str, float]
    skipped: dict[str, str]  # example id -> error, for on_error 'skip' (resample mode: failed on the path)
    rollouts: list[Rollout]  # the alpha = 1 rollouts of the prompts that were scored


def shard_scores(model, tokenizer, rollouts: list[Rollout], signal: Signal, cfg: AttributionConfig, sites: list[Site],
                 baselines: dict[Site, torch.Tensor], saes: dict | None = None, log=None, agree=None,
                 candidates: dict[Site, list[int]] | None = None) -> ShardScores:
    """Partial scores of one shard of prompts from its alpha = 1 rollouts: the unit of work of a
    gradient worker. Every prompt is scored independently, so merging the partials of any sharding
    gives the in-process result. Resample mode draws the shard's path rollouts here; with on_error
    'skip', a prompt whose signal fails anywhere on a path is left out of every site.

    ``agree``: set on a rank of a ZeRO-3 group (see ``site_scores``); resample mode samples
    inside this function, which such a group cannot do in lockstep.

    Method 'component' scores the components named in ``candidates`` (per site, chosen from a PG pass
    over all the prompts, ``component_candidates``) on the per-component path."""
    if cfg.method == "component":
        from ipg.component_path import component_partial

        if agree is not None:
            raise InputError("attribution.method: 'component' is not available with the deepspeed gradient backend yet "
                             "(its forward passes would need the group's lockstep); use the torch backend or method 'pg'")
        if candidates is None or set(candidates) != set(sites):
            raise InputError("attribution.method 'component': needs the candidates of every site, chosen from PG scores "
                             "(ipg.component_path.component_candidates)")
        t = time.perf_counter()
        partial = component_partial(model, rollouts, sites, candidates, cfg, baselines, saes)
        (log or (lambda msg: None))(f"component path: {sum(map(len, candidates.values()))} candidates in {time.perf_counter() - t:.1f}s")
        return ShardScores(partial, {site: [(1.0, 1.0, rollouts)] for site in sites},
                           {"path_rollouts": 0.0, "gradient": time.perf_counter() - t}, {}, rollouts)
    if agree is not None and cfg.resample and cfg.method == "ipg":
        raise InputError("attribution.resample: not available with the deepspeed gradient backend yet (path sampling "
                         "would need lockstep generation); use the torch backend for resample mode")
    log = log or (lambda msg: None)
    timings = {"path_rollouts": 0.0, "gradient": 0.0}
    paths, skipped = {}, {}
    if cfg.resample and cfg.method == "ipg":
        t = time.perf_counter()
        while True:  # path rollouts of all sites first, so a prompt skipped at one site is dropped from all
            examples = [r.example for r in rollouts]
            before = len(skipped)
            paths = {site: [(a, w, rollouts if a == 1.0 else sample_rollouts(
                model, tokenizer, examples, signal, cfg, site=site, alpha=a, baseline=baselines[site], saes=saes,
                skipped=skipped)) for a, w in cfg.alphas] for site in sites}
            if len(skipped) == before:
                break
            rollouts = [r for r in rollouts if r.example["id"] not in skipped]  # per-example seeds: others unchanged
        timings["path_rollouts"] += time.perf_counter() - t
    else:
        paths = {site: [(a, w, rollouts) for a, w in cfg.alphas] for site in sites}
    partial = PartialScores()
    # outside resample mode every site's path holds the same rollouts: one group shares captures and
    # micro-batches; resample mode drew other trajectories per site
    groups = [[site] for site in sites] if cfg.resample and cfg.method == "ipg" else [sites]
    for group in groups:
        t = time.perf_counter()
        trajectories, rows = rows_for(paths[group[0]])
        per_site = site_scores(model, group, trajectories, rows, len(rollouts), baselines, cfg, saes, agree)
        for site in group:
            for p, r in enumerate(rollouts):
                partial.add_prompt(site, per_site[site][p], len(r.samples))
        timings["gradient"] += time.perf_counter() - t
        log(f"{', '.join(map(str, group))}: {len(rows)} (trajectory, alpha) rows in {time.perf_counter() - t:.1f}s")
    return ShardScores(partial, paths, timings, skipped, rollouts)


def prepare_examples(examples: list[dict]) -> list[dict]:
    """Examples with ids (derived from the position when absent) and non-empty prompts, or an error."""
    if not examples:
        raise InputError("examples: empty; attribution needs at least one example with a 'prompt'")
    examples = [{"id": str(ex.get("id", f"example-{i}")), **ex} for i, ex in enumerate(examples)]
    for ex in examples:
        if not isinstance(ex.get("prompt"), str) or not ex["prompt"]:
            raise InputError(f"example '{ex['id']}': field 'prompt' is missing or empty")
    return examples


def attribute(model, tokenizer, examples: list[dict], *, signal="accuracy", signal_params: dict | None = None,
              saes: dict | None = None, run_id: str = "", log=None, prompt_format: PromptFormat | str = "auto",
              pg_table=None, **settings) -> Attribution:
    """Attribute ``signal`` to the components of ``layers`` (see AttributionConfig for settings).

    ``examples`` are dicts with ``prompt`` (and ``answer`` for accuracy); ``id`` is derived when absent.
    ``prompt_format`` makes them the model's input (``ipg.prompts``: auto, chat, raw or a template; an
    example that already has ``prompt_ids`` keeps them).
    Returns an Attribution whose ``table`` has one row per component (layer, kind, index, score,
    stderr, n_prompts, n_trajectories, rank and the settings).

    Method 'component' runs PG first and re-scores each site's top ``candidates`` on the per-component
    path; its table holds those rows only. ``pg_table``: a PG score table of the same examples and
    settings to take them from instead (an experiment that ran PG already).
    """
    cfg = AttributionConfig(**{k: tuple(v) if k == "layers" else v for k, v in settings.items()})
    fmt = prompt_format if isinstance(prompt_format, PromptFormat) else PromptFormat(prompt_format)
    examples = format_examples(tokenizer, prepare_examples(examples), fmt)
    sig = make_signal(signal, **(signal_params or {}))
    sig.check(examples)
    sites = [Site(layer, cfg.kind) for layer in cfg.layers]
    for site in sites:
        check_site(model, site, saes)
    log = log or (lambda msg: None)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    skipped: dict[str, str] = {}
    base = sample_rollouts(model, tokenizer, examples, sig, cfg, saes=saes, skipped=skipped)
    timings["rollout"] = time.perf_counter() - t0
    log(f"rollouts: {len(examples)} prompts x {cfg.n_samples} samples in {timings['rollout']:.1f}s")
    if not base:
        raise InputError(f"examples: the signal failed on every example (on_error 'skip'); first: {next(iter(skipped.values()))}")
    baselines = site_baselines(model, base, sites, cfg, saes)
    candidates = None
    if cfg.method == "component":
        from ipg.component_path import component_candidates

        if pg_table is None:
            pg_cfg = dataclasses.replace(cfg, method="pg")
            pg_table = shard_scores(model, tokenizer, base, sig, pg_cfg, sites, baselines, saes, log).partial.table(
                score_meta(model, sig.name, pg_cfg, run_id))
        candidates = component_candidates(pg_table, sites, cfg.candidates)
    shard = shard_scores(model, tokenizer, base, sig, cfg, sites, baselines, saes, log, candidates=candidates)
    partial, paths, base = shard.partial, shard.paths, shard.rollouts
    skipped.update(shard.skipped)
    examples = [r.example for r in base]
    timings.update(shard.timings)
    diagnostics: dict = {"sites": {}}
    j1 = float(np.mean([np.mean(r.rewards) for r in base]))
    t = time.perf_counter()
    for site in sites:
        diagnostics["sites"][str(site)] = _completeness(model, tokenizer, examples, sig, cfg, site, baselines[site],
                                                        saes, paths[site], j1, float(partial.means(site).sum()))
    timings["completeness"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0
    diagnostics.update(
        timings={k: round(v, 3) for k, v in timings.items()},
        seconds_per_prompt=round(timings["total"] / len(examples), 4),
        mean_reward=j1,
        mixed_groups=sum(len(set(r.rewards)) > 1 for r in base),
        n_prompts=len(examples),
        prompt_format=fmt.describe(tokenizer),
        skipped=skipped,
        n_trajectories=sum(len(r.samples) for r in base),
        mean_generated_tokens=float(np.mean([s.n_tokens for r in base for s in r.samples])),
    )
    widths = {site: check_site(model, site, saes) for site in sites}
    return Attribution(partial.table(score_meta(model, sig.name, cfg, run_id)), partial, diagnostics, cfg, baselines, base, widths)


def score_meta(model, signal_name: str, cfg: AttributionConfig, run_id: str = "") -> dict:
    """The settings columns of a score table (``model``: the model, or its fingerprint string)."""
    from ipg.models import model_fingerprint

    return {"run_id": run_id, "model": model if isinstance(model, str) else model_fingerprint(model), "signal": signal_name, "method": cfg.method,
            "q": cfg.q if cfg.method == "ipg" else 1, "schedule": cfg.schedule, "baseline": cfg.baseline,
            "advantage": cfg.advantage, "positions": cfg.positions, "seed": cfg.seed}


def _completeness(model, tokenizer, examples, sig, cfg, site, baseline, saes, path, j1: float, sum_scores: float) -> dict:
    """J along the path vs the sum of scores (docs/method.md: J can jump right after alpha = 0)."""
    out = {"sum_scores": sum_scores, "J_alpha1": j1,
           "comparable": cfg.advantage == "none",  # only raw rewards put scores in units of J
           "note": "sum of scores ~ J(1) - J(0) holds for advantage 'none' with on-policy samples (resample)"}
    if cfg.resample and cfg.method == "ipg":
        out["J_path"] = [[a, float(np.mean([np.mean(r.rewards) for r in rolls]))] for a, _, rolls in path]
    if not cfg.completeness:
        return out
    alpha_min = cfg.alphas[0][0]
    for name, alpha in (("J_alpha0", 0.0), ("J_alpha_min", alpha_min)):
        if alpha == 1.0:
            out[name] = j1
        elif "J_path" in out and alpha == out["J_path"][0][0]:
            out[name] = out["J_path"][0][1]  # resample mode sampled there already
        else:
            rolls = sample_rollouts(model, tokenizer, examples, sig, cfg, site=site, alpha=alpha, baseline=baseline, saes=saes)
            out[name] = float(np.mean([np.mean(r.rewards) for r in rolls]))
    out["alpha_min"] = alpha_min
    out["gap"] = sum_scores - (j1 - out["J_alpha0"])
    return out
