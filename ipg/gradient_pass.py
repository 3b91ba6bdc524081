"""The gradient pass of IPG: per (trajectory, alpha) row, the gradient of A_n log pi(tau_n) with respect to
a site's interpolated activations, times (h - h'), summed over the decision positions.

The blocks below the site run once per trajectory (capture pass) and are replaced by stand-ins that
emit the interpolated tensor, so each row costs a forward/backward of the blocks from the site up only;
and with positions 'generated', of the positions from the last prompt token on only (the prompt before
it is the same in every row of a prompt: its keys/values run once per prompt, ``ipg.prefix``). Rows are
packed into micro-batches under a token budget.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ipg.attribution_config import AUTOCAST_DTYPES, AttributionConfig
from ipg.components import PROJECTIONS, Site, capture_sites, check_site, decoder_layers, edit
from ipg.generation import Sample
from ipg.rollouts import Rollout


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
    return _swapped_blocks(
        model, {i: (lambda b, i=i: _StandIn(b, value if i == upto - 1 else None)) for i in range(upto)}
    )


def _checkpointed(model, start: int, enabled: bool):
    """Blocks ``start``.. recompute their activations in the backward pass instead of storing them."""
    return _swapped_blocks(
        model, {i: _Checkpointed for i in range(start, len(decoder_layers(model)))} if enabled else {}
    )


def positions_mask(prompt_len: int, total_len: int, width: int, positions: str) -> torch.Tensor:
    """(width,) bool: the positions on the path. generated: L-1 .. L+T-2 (decision positions)."""
    mask = torch.zeros(width, dtype=torch.bool)
    if positions == "all":
        mask[:total_len] = True
    else:
        mask[prompt_len - 1 : total_len - 1] = True
    return mask


def _at_least_float32(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


# The LM head's logits (positions x vocabulary, float32) are formed in chunks of at most this many bytes:
# a long trajectory or a large vocabulary never holds positions x vocabulary at once.
LOGIT_CHUNK_BYTES = 256 * 2**20


def _chunk_positions(vocab: int) -> int:
    """Positions per LM-head chunk under ``LOGIT_CHUNK_BYTES`` (float32 logits)."""
    return max(1, LOGIT_CHUNK_BYTES // (vocab * 4))


class _TokenLogprobs(torch.autograd.Function):
    """log pi(target | state) / temperature-scaled, per row of ``states`` (n, d), through a linear LM head
    in chunks of positions. When the states need a gradient it is formed in the forward pass, chunk by
    chunk, as d log pi / d state = ((onehot - softmax) / temperature [x the softcap's derivative]) @ W,
    an (n, d) tensor; the backward pass only scales it by the incoming per-position gradient. So no
    chunk's logits outlive it, none is recomputed, and the work is autograd's: one matmul forward, one
    backward."""

    @staticmethod
    def forward(ctx, states, targets, weight, bias, temperature: float, cap):
        n = states.shape[0]
        step = _chunk_positions(weight.shape[0])
        out = torch.empty(n, dtype=torch.promote_types(states.dtype, torch.float32), device=states.device)
        grad = torch.empty_like(states) if ctx.needs_input_grad[0] else None
        for i in range(0, n, step):
            z = _at_least_float32(torch.nn.functional.linear(states[i : i + step], weight, bias))  # (c, V) logits
            squash = None
            if cap:
                squash = torch.tanh(z / cap)
                z = squash * cap
            if temperature != 1.0:
                z = z / temperature
            tgt = targets[i : i + step, None]
            picked = z.gather(-1, tgt)[:, 0]
            top = z.amax(-1, keepdim=True)
            total = z.sub_(top).exp_().sum(-1)  # z now holds exp(logit - max), in place: one (c, V) buffer
            out[i : i + step] = picked - top[:, 0] - total.log()
            if grad is not None:  # minus the gradient: (softmax - onehot) / temperature, through the softcap, @ W
                p = z.div_(total[:, None])
                p.scatter_add_(-1, tgt, torch.full_like(tgt, -1, dtype=p.dtype))
                if temperature != 1.0:
                    p.div_(temperature)
                if squash is not None:
                    p.mul_(1 - squash * squash)
                grad[i : i + step] = (p.to(weight.dtype) @ weight).to(states.dtype)
        ctx.save_for_backward(grad)
        return out

    @staticmethod
    def backward(ctx, g):
        (grad,) = ctx.saved_tensors
        return -(g[:, None].to(grad.dtype) * grad), None, None, None, None, None


def _token_logprobs(model, states: torch.Tensor, targets: torch.Tensor, temperature: float) -> torch.Tensor:
    """log pi(target | state) for each row of ``states`` (n, d) after the final norm, the LM head in
    chunks of positions (``LOGIT_CHUNK_BYTES``)."""
    head = model.lm_head
    cap = getattr(model.config, "final_logit_softcapping", None)
    sharded = hasattr(getattr(head, "weight", None), "ds_id")  # ZeRO-3: the module call gathers the weight
    if isinstance(head, torch.nn.Linear) and not sharded and not head.weight.requires_grad:
        return _TokenLogprobs.apply(states, targets, head.weight, head.bias, temperature, cap)
    from torch.utils.checkpoint import checkpoint  # any other head: autograd, each chunk recomputed backward

    step = _chunk_positions(model.config.vocab_size)
    grad = torch.is_grad_enabled() and states.requires_grad
    fn = lambda s, t: _head_logprobs(head, s, t, temperature, cap)  # noqa: E731
    return torch.cat(
        [
            checkpoint(fn, states[i : i + step], targets[i : i + step], use_reentrant=False)
            if grad and states.shape[0] > step
            else fn(states[i : i + step], targets[i : i + step])
            for i in range(0, max(states.shape[0], 1), step)
        ]
    )


def _head_logprobs(head, states, targets, temperature: float, cap) -> torch.Tensor:
    logits = _at_least_float32(head(states))
    if cap:
        logits = torch.tanh(logits / cap) * cap
    logits = logits / temperature
    return logits.gather(-1, targets[:, None])[:, 0] - torch.logsumexp(logits, dim=-1)


def _policy_logprobs(model, hidden: torch.Tensor, ids: torch.Tensor, target_mask: torch.Tensor, temperature: float):
    """Sum of log pi(a_t | s_t) per row over ``target_mask`` positions; hidden (R, T, d) after the
    final norm. Only the masked positions go through the LM head (``_token_logprobs``)."""
    states = hidden[:, :-1][target_mask[:, :-1]]  # (N_gen, d)
    targets = ids[:, 1:][target_mask[:, :-1]]  # (N_gen,)
    token_lp = _token_logprobs(model, states, targets, temperature)
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
        if batch and (
            (len(batch) + 1) * w > budget or (prefix_lens and prefix_lens[r.traj] != prefix_lens[batch[0].traj])
        ):
            yield batch
            batch, w = [], lengths[r.traj]
        batch.append(r)
        width = w
    if batch:
        yield batch


def _autocast(cfg: AttributionConfig, device: torch.device):
    dtype = AUTOCAST_DTYPES[cfg.autocast]
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def site_scores(
    model,
    sites: list[Site],
    trajectories: list[_Trajectory],
    rows: list[_Row],
    n_prompts: int,
    baselines: dict[Site, torch.Tensor],
    cfg: AttributionConfig,
    saes: dict | None = None,
    agree=None,
) -> dict[Site, np.ndarray]:
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
    block input (MLP and attention sites) or residual (SAE sites) in the rows' layout. A backward pass must run inside
    the body too: checkpointed blocks recompute their forward then."""
    if site.kind in PROJECTIONS:  # the site's own block runs from its captured input, its projection fed x
        ctx_skip = _skip_blocks(model, site.layer, padded("block_input")) if site.layer > 0 else nullcontext()
        ctx_edit = edit(model, site, lambda _: x, positions="all")
        first_run = site.layer
    else:
        emitted = x if sae is None else padded("residual") + sae.decode_delta(x - h).to(h.dtype)
        ctx_skip, ctx_edit = _skip_blocks(model, site.layer + 1, emitted), nullcontext()
        first_run = site.layer + 1
    with (
        ctx_skip,
        ctx_edit,
        _checkpointed(model, first_run, cfg.checkpoint and torch.is_grad_enabled()),
        _autocast(cfg, x.device),
    ):
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
    acts: dict[str, torch.Tensor]  # "h" (T, width), plus "block_input" (MLP, attention) or "residual" (SAE) sites
    on_path: torch.Tensor  # (T,) bool: the path positions
    targets: torch.Tensor  # (T,) bool: the states that predict generated tokens

    @classmethod
    def capture(cls, model, site: Site, sample: Sample, cfg: AttributionConfig, saes: dict | None = None):
        ids = sample.prompt_ids + sample.completion_ids
        T, L = len(ids), len(sample.prompt_ids)
        device = next(model.parameters()).device
        acts = {k: v[0] for k, v in capture_sites(model, [site], [ids], saes)[site].items()}
        return cls(
            ids,
            acts,
            positions_mask(L, T, T, cfg.positions).to(device),
            positions_mask(L, T, T, "generated").to(device),
        )

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


def _batch_contributions(
    model, site, saes, batch: list[_Row], trajectories, acts, b, cfg, device, past=None
) -> np.ndarray:
    """(R, width): sum over path positions of (h - h') * grad for each row. ``past``: the rows' shared
    prompt prefix (keys/values of positions 0..P-1 in every block); the rows then run positions P.. only."""
    sae = (saes or {}).get(site.layer) if site.kind == "sae" else None
    width = max(len(trajectories[r.traj].ids) for r in batch)
    start = past.get_seq_length() if past is not None else 0

    def padded(key):  # (R, T, d) from per-trajectory (T_full, d) tensors, cropped/padded to width, from start
        return torch.stack([acts[r.traj][key][start:width] for r in batch]) if key in acts[batch[0].traj] else None

    ids = torch.tensor(
        [trajectories[r.traj].ids + [0] * (width - len(trajectories[r.traj].ids)) for r in batch], device=device
    )[:, start:]
    on_path = torch.stack(
        [
            positions_mask(trajectories[r.traj].prompt_len, len(trajectories[r.traj].ids), width, cfg.positions)
            for r in batch
        ]
    ).to(device)[:, start:]  # (R, T)
    targets = torch.stack(
        [
            positions_mask(trajectories[r.traj].prompt_len, len(trajectories[r.traj].ids), width, "generated")
            for r in batch
        ]
    ).to(device)[:, start:]  # (R, T): states that predict generated tokens
    h = padded("h")  # residual: block output (R, T, hidden); mlp/attn: projection input (R, T, width); sae: features
    b = b.to(h.dtype)  # a bf16 model's path stays bf16 (the baseline is kept in float32)
    alpha = torch.tensor([r.alpha for r in batch], device=device, dtype=h.dtype)[:, None, None]
    leaf = (b + alpha * (h - b)).detach().requires_grad_(True)
    x = torch.where(on_path[..., None], leaf, h)
    adv = _at_least_float32(torch.tensor([trajectories[r.traj].advantage for r in batch], device=device, dtype=h.dtype))

    with torch.enable_grad(), from_site(model, site, sae, x, h, padded, cfg):
        logp = policy_logprobs(model, ids, targets, cfg, past)  # (R,)
        (adv * logp).sum().backward()
    grad = leaf.grad  # (R, T, width_site)
    delta = _at_least_float32(h - b) * on_path[..., None]
    return (delta * _at_least_float32(grad)).sum(1).double().cpu().numpy()  # summed over positions in float32 at least


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
