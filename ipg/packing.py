"""Packed evaluation: many steered generations of a run in shared batches.

An experiment evaluates the same prompts under many steering variants (each method, layer, p, gamma,
seed and random draw). Generated one pass at a time, every pass pays its own per-step overhead, and a
small model's batch runs far from full. ``generate_packed`` takes them all as *jobs* (examples and a
steering variant each) and runs them together:

- each job's rows (example x sample) are cut into batches of ``batch_size`` rows exactly as a pass of
  its own would cut them (``ipg.generation.generate``);
- batches holding the same rows (the same prompts: the same padding, so the same attention
  arithmetic) are stacked into one forward, as many as fit ``pack_tokens`` (rows x (longest prompt +
  max_new_tokens));
- each row is steered by its job's variant through ``ipg.steering.per_row``.

So a row computes what its own pass computes; greedy outputs equal the separate passes token for
token, and sampled draws are the same since each draw is seeded by (seed, example id, sample index).
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from ipg.errors import InputError
from ipg.generation import Sample, SamplingParams, generate_batch, idle_batches
from ipg.prompts import prompt_ids
from ipg.steering import per_row


@dataclass(frozen=True)
class Job:
    """One evaluation: ``examples`` generated under ``steering`` (None, {"scale": components, "gamma"} or
    {"add": layer, "vector", "coefficient"})."""

    examples: list[dict]
    steering: dict | None = None


@dataclass(frozen=True)
class Chunk:
    job: int
    rows: list[tuple[dict, int]]  # (example, sample index)


def check_jobs(jobs: list[Job]) -> None:
    for k, job in enumerate(jobs):
        ids = [ex["id"] for ex in job.examples]
        if len(set(ids)) != len(ids):
            dup = next(i for i in ids if ids.count(i) > 1)
            raise InputError(
                f"examples: duplicate id '{dup}' in evaluation {k}; samples are keyed and seeded by id, so ids must be unique"
            )


def pack(jobs: list[Job], params: SamplingParams, tokenizer, *, batch_size: int, pack_tokens: int) -> list[list[Chunk]]:
    """The packed batches: lists of chunks with identical rows, each list within ``pack_tokens``."""
    if batch_size < 1:
        raise InputError(f"evaluation.batch_size: must be >= 1, got {batch_size}")
    groups: dict[tuple, list[Chunk]] = {}
    for k, job in enumerate(jobs):
        rows = [(ex, j) for ex in job.examples for j in range(params.n)]
        for start in range(0, len(rows), batch_size):
            part = rows[start : start + batch_size]
            groups.setdefault(tuple((ex["id"], j) for ex, j in part), []).append(Chunk(k, part))
    batches = []
    for chunks in groups.values():
        rows = chunks[0].rows
        per_chunk = len(rows) * (max(len(prompt_ids(tokenizer, ex)) for ex, _ in rows) + params.max_new_tokens)
        per_batch = max(1, pack_tokens // per_chunk)
        batches += [chunks[i : i + per_batch] for i in range(0, len(chunks), per_batch)]
    return batches


@torch.no_grad()
def generate_packed(
    model,
    tokenizer,
    jobs: list[Job],
    params: SamplingParams,
    *,
    batch_size: int,
    pack_tokens: int,
    positions: str = "generated",
    saes: dict | None = None,
    agree=None,
    log=None,
    done=None,
) -> list[list[list[Sample]]]:
    """Every job's samples (per example, ``params.n`` each, in input order), generated in packed batches.
    ``log(line)``: a line per packed batch; ``done(k, samples)``: called once job k is complete. ``agree``:
    a rank of a ZeRO-3 group (see ``ipg.generation.generate``)."""
    check_jobs(jobs)
    batches = pack(jobs, params, tokenizer, batch_size=batch_size, pack_tokens=pack_tokens)
    left = [0] * len(jobs)
    for chunks in batches:
        for c in chunks:
            left[c.job] += 1
    found: list[dict] = [{} for _ in jobs]
    idle_batches(model, tokenizer, params, len(batches), agree)
    variants = [job.steering for job in jobs]
    steered = any(v is not None for v in variants)
    start = time.perf_counter()
    with per_row(model, variants, positions=positions, saes=saes) if steered else nullcontext(None) as rows:
        for b, chunks in enumerate(batches):
            flat = [row for c in chunks for row in c.rows]
            variant = torch.tensor([c.job for c in chunks for _ in c.rows])
            # with "generated" edits the stacked copies share one prefill of their prompts (see generate_batch)
            samples = generate_batch(
                model,
                tokenizer,
                flat,
                params,
                agree=agree,
                copies=len(chunks) if positions == "generated" else 1,
                on_rows=(lambda live, variant=variant: rows(variant[live.cpu()])) if steered else None,
            )
            if log is not None:
                log(
                    f"  packed batch {b + 1}/{len(batches)}: {len(flat)} rows of {len(chunks)} evaluation{'s' * (len(chunks) != 1)}, "
                    f"{time.perf_counter() - start:.1f} s"
                )
            at = 0
            for c in chunks:
                for (ex, j), s in zip(c.rows, samples[at : at + len(c.rows)]):
                    found[c.job][(ex["id"], j)] = s
                at += len(c.rows)
                left[c.job] -= 1
                if left[c.job] == 0 and done is not None:
                    done(c.job, _ordered(jobs[c.job], found[c.job], params.n))
    return [_ordered(job, found[k], params.n) for k, job in enumerate(jobs)]


def _ordered(job: Job, found: dict, n: int) -> list[list[Sample]]:
    return [[found[(ex["id"], j)] for j in range(n)] for ex in job.examples]
