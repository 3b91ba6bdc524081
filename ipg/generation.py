"""Batched generation (left padding, KV cache), greedy or sampled, with per-token log-probabilities.

Sampling draws each trajectory's tokens from its own generator seeded by (seed, example id, sample
index), so a prompt's samples do not depend on the batch size, on which other prompts share its batch,
or on how prompts are sharded across workers. Log-probabilities are those of the unmodified policy
(temperature 1, no top-p): the ``log pi(a_t | s_t)`` of the policy gradient.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch

from ipg.components import prompt_prefix
from ipg.errors import InputError
from ipg.prompts import prompt_ids as encoded_prompt


@dataclass
class Sample:
    """One generated trajectory. ``completion_ids`` exclude the prompt and stop after EOS (EOS kept)."""

    example_id: str
    sample_index: int
    prompt_ids: list[int]
    completion_ids: list[int]
    text: str  # decoded completion, EOS and padding removed
    logprobs: list[float] = field(default_factory=list)  # one per completion token
    finished: bool = True  # False when max_new_tokens cut it off before EOS

    @property
    def n_tokens(self) -> int:
        return len(self.completion_ids)


@dataclass(frozen=True)
class SamplingParams:
    n: int = 1
    greedy: bool = True
    temperature: float = 0.6
    top_p: float = 0.8
    max_new_tokens: int = 128
    seed: int = 0

    def __post_init__(self):
        if self.n < 1:
            raise InputError(f"sampling.n: must be >= 1, got {self.n}")
        if not self.greedy and not self.temperature > 0:
            raise InputError(f"sampling.temperature: must be > 0 for sampling, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise InputError(f"sampling.top_p: must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise InputError(f"sampling.max_new_tokens: must be >= 1, got {self.max_new_tokens}")


def sample_seed(seed: int, example_id: str, sample_index: int) -> int:
    digest = hashlib.sha256(f"{seed}/{example_id}/{sample_index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


LEAVE_SHARE = 8  # finished rows leave a decode batch once they are 1/LEAVE_SHARE of it (0: they never leave)
NUCLEUS_SCAN = 256  # candidates searched for the top-p nucleus before a full sort


def _pick(logits: torch.Tensor, params: SamplingParams, generators: list[torch.Generator]) -> torch.Tensor:
    """Next token per row from raw logits (B, V): argmax, or temperature + nucleus sampling."""
    if params.greedy:
        return logits.argmax(-1)
    probs = torch.softmax(logits / params.temperature, dim=-1)  # (B, V)
    if params.top_p < 1.0:
        # the nucleus is a prefix of the tokens by probability: look for it among the top NUCLEUS_SCAN
        # first (a partial selection, not a sort of the whole vocabulary), and sort all only for a row
        # whose nucleus is wider; the kept probabilities, and so the draws, are the same either way
        top, order = probs.topk(min(NUCLEUS_SCAN, probs.shape[-1]), dim=-1)
        if not bool((top.sum(-1) >= params.top_p).all()):
            top, order = probs.sort(-1, descending=True)
        # keep the smallest prefix whose mass reaches top_p (the first token is always kept)
        drop = (top.cumsum(-1) - top) >= params.top_p
        probs = torch.zeros_like(probs).scatter(-1, order, top.masked_fill(drop, 0.0))
    return torch.stack([torch.multinomial(probs[i], 1, generator=g)[0] for i, g in enumerate(generators)])


@torch.no_grad()
def generate(
    model,
    tokenizer,
    examples: list[dict],
    params: SamplingParams = SamplingParams(),
    *,
    batch_size: int = 64,
    agree=None,
) -> list[list[Sample]]:
    """Generate ``params.n`` completions for each example (dict with ``id`` and ``prompt_ids``, or a
    ``prompt`` that the default format encodes: ``ipg.prompts``).

    Returns one list of ``n`` samples per example, in input order. ``batch_size`` counts rows
    (prompts x samples) per forward pass. ``agree``: set on a rank of a ZeRO-3 group, whose ranks
    sample different prompts but must make the same forward calls (``agree(n)`` is the group's largest
    ``n``): every rank runs as many batches and decode steps as the busiest one, with a one-token dummy
    batch where it has none left. The samples do not change.
    """
    ids = [ex["id"] for ex in examples]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise InputError(f"examples: duplicate id '{dup}'; samples are keyed and seeded by id, so ids must be unique")
    rows = [(ex, j) for ex in examples for j in range(params.n)]
    batches = [rows[start : start + batch_size] for start in range(0, len(rows), batch_size)]
    idle_batches(model, tokenizer, params, len(batches), agree)
    out: dict[tuple[str, int], Sample] = {}
    for chunk in batches:
        for (ex, j), sample in zip(chunk, generate_batch(model, tokenizer, chunk, params, agree=agree)):
            out[(ex["id"], j)] = sample
    return [[out[(ex["id"], j)] for j in range(params.n)] for ex in examples]


def idle_batches(model, tokenizer, params: SamplingParams, n_batches: int, agree=None) -> None:
    """On a rank of a ZeRO-3 group (``agree``): as many one-token dummy batches as the group's busiest
    rank has batches more than this one's ``n_batches``, so that every rank makes the same forward calls."""
    if agree is None:
        return
    pad = tokenizer.pad_token_id
    device = next(model.parameters()).device
    for _ in range(agree(n_batches) - n_batches):
        _decode_loop(
            model,
            torch.tensor([[0 if pad is None else pad]], device=device),
            torch.ones(1, 1, dtype=torch.long, device=device),
            SamplingParams(max_new_tokens=params.max_new_tokens),
            [torch.Generator()],
            tokenizer.eos_token_id,
            agree,
        )


def generate_batch(
    model, tokenizer, rows: list[tuple[dict, int]], params: SamplingParams, *, agree=None, on_rows=None, copies: int = 1
) -> list[Sample]:
    """One left-padded batch: sample ``j`` of example ``ex`` for each ``(ex, j)`` of ``rows``, in order.
    ``on_rows``: told which rows each forward holds (see ``_decode_loop``; per-row steering uses it).
    ``copies``: the rows are that many stacked copies of the same prompts (a packed batch), which then share
    one prefill of the prompts up to their last token (only for edits at the ``generated`` positions)."""
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    device = next(model.parameters()).device
    prompts = [encoded_prompt(tokenizer, ex) for ex, _ in rows]
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)  # (B, L)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)  # (B, L)
    generators = [torch.Generator().manual_seed(sample_seed(params.seed, ex["id"], j)) for ex, j in rows]
    completions = _decode_loop(model, ids, mask, params, generators, eos, agree, on_rows, copies)
    return [
        Sample(
            ex["id"], j, p, toks, tokenizer.decode([t for t in toks if t != eos], skip_special_tokens=True), lps, done
        )
        for (ex, j), p, (toks, lps, done) in zip(rows, prompts, completions)
    ]


def _keeps_last_logits(model) -> bool:
    """Whether the model's forward takes ``logits_to_keep`` (transformers' causal LMs do; a remote-code
    model may not)."""
    import inspect

    return "logits_to_keep" in inspect.signature(model.forward).parameters


def _decode_loop(model, ids, mask, params, generators, eos, agree=None, on_rows=None, copies: int = 1):
    """KV-cached decode of a left-padded batch; returns (token ids, logprobs, finished) per row.

    Finished rows leave the batch (their keys and values are dropped from the cache) once they are
    ``1/LEAVE_SHARE`` of it, so a long row does not keep the finished ones computing. ``on_rows(rows)`` is told,
    before the prefill and whenever rows leave, which of the batch's rows the next forward holds (a
    (live,) tensor of row numbers): per-row steering follows it. ``agree``: a ZeRO-3 rank keeps stepping
    (with at least one row, its tokens no longer kept) until every rank's batch is finished."""
    batch = ids.shape[0]
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, L): left padding does not shift positions
    last_only = {"logits_to_keep": 1} if _keeps_last_logits(model) else {}  # not (B, L, vocabulary) for the prompts
    rows = torch.arange(batch, device=ids.device)  # the batch row of each row the forward holds
    if ids.shape[1] > 1:
        # the prompts without their last token first (no position there predicts a generated token, so no
        # "generated" edit acts), once for the first batch // copies rows, whose keys and values every copy
        # shares; then every row's last prompt token, steered. Every prefill is split this way, packed or
        # not, so that a packed row and the same row generated alone run the same arithmetic
        unique = batch // copies
        if on_rows is not None:
            on_rows(rows[:unique])  # only "all" edits act on the prefix; copies > 1 only comes without them
        with prompt_prefix():
            out = model(
                input_ids=ids[:unique, :-1],
                attention_mask=mask[:unique, :-1],
                position_ids=positions[:unique, :-1],
                use_cache=True,
                **last_only,
            )
        cache = out.past_key_values
        if copies > 1:
            cache.batch_select_indices(torch.arange(unique, device=ids.device).repeat(copies))
        if on_rows is not None:
            on_rows(rows)
        out = model(
            input_ids=ids[:, -1:],
            attention_mask=mask,
            position_ids=positions[:, -1:],
            past_key_values=cache,
            use_cache=True,
        )
    else:
        if on_rows is not None:
            on_rows(rows)
        if agree is not None:  # a ZeRO-3 rank makes the two prefill calls its group's split prefills make
            model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False, **last_only)
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **last_only)
    cache = out.past_key_values
    compactable = hasattr(cache, "batch_select_indices")
    logits = out.logits[:, -1].float()  # (b, V)
    tokens: list[list[int]] = [[] for _ in range(batch)]
    logprobs: list[list[float]] = [[] for _ in range(batch)]
    done = torch.zeros(batch, dtype=torch.bool, device=ids.device)
    next_pos = positions[:, -1:] + 1  # (b, 1)
    for _ in range(params.max_new_tokens):
        nxt = _pick(logits, params, [generators[i] for i in rows.tolist()])  # (b,)
        lp = torch.log_softmax(logits, -1).gather(-1, nxt[:, None])[:, 0]  # (b,)
        live = ~done[rows]  # (b,)
        # one transfer per step, not one per row: with hundreds of rows, per-element reads cost more than a small model's step
        for r, keep, t, p in zip(rows.tolist(), live.tolist(), nxt.tolist(), lp.tolist()):
            if keep:
                tokens[r].append(t)
                logprobs[r].append(p)
        done[rows] |= nxt == eos
        live &= nxt != eos
        running = int(bool(live.any()))
        if (agree(running) if agree is not None else running) == 0:
            break
        n_live = int(live.sum())
        if LEAVE_SHARE and compactable and n_live and len(rows) - n_live >= max(1, len(rows) // LEAVE_SHARE):
            keep = torch.nonzero(live).flatten()
            cache.batch_select_indices(keep)
            rows, mask, next_pos, nxt = rows[keep], mask[keep], next_pos[keep], nxt[keep]
            if on_rows is not None:
                on_rows(rows)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=-1)
        out = model(
            input_ids=nxt[:, None], attention_mask=mask, position_ids=next_pos, past_key_values=cache, use_cache=True
        )
        cache, logits, next_pos = out.past_key_values, out.logits[:, -1].float(), next_pos + 1
    return [(tokens[i], logprobs[i], bool(done[i])) for i in range(batch)]


@torch.no_grad()
def rescore(model, samples: list[Sample], *, batch_tokens: int = 8192) -> list[list[float]]:
    """Per-token log-probabilities (raw model distribution, as in ``Sample.logprobs``) of each sample's
    completion under ``model``, teacher-forced: how another engine's samples score under these weights."""
    device = next(model.parameters()).device
    order = sorted(range(len(samples)), key=lambda i: -(len(samples[i].prompt_ids) + samples[i].n_tokens))
    out: list[list[float]] = [[] for _ in samples]
    i = 0
    while i < len(order):
        width = len(samples[order[i]].prompt_ids) + samples[order[i]].n_tokens
        chunk = order[i : i + max(1, batch_tokens // max(width, 1))]
        i += len(chunk)
        seqs = [samples[k].prompt_ids + samples[k].completion_ids for k in chunk]
        ids = torch.tensor([s + [0] * (width - len(s)) for s in seqs], device=device)
        mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs], device=device)
        logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)  # (B, T, V)
        for row, k in enumerate(chunk):
            p, n = len(samples[k].prompt_ids), samples[k].n_tokens
            targets = ids[row, p : p + n]
            out[k] = logp[row, p - 1 : p - 1 + n].gather(-1, targets[:, None])[:, 0].tolist()
    return out


def logprob_gap(samples: list[Sample], rescored: list[list[float]]) -> dict:
    """Sum and max of |engine log-prob - rescored log-prob| over all completion tokens, and the count."""
    diffs = [abs(a - b) for s, r in zip(samples, rescored) for a, b in zip(s.logprobs, r)]
    return {"sum_abs": float(sum(diffs)), "max_abs": float(max(diffs, default=0.0)), "n_tokens": len(diffs)}
