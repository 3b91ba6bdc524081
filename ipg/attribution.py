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

Modules: ``ipg.attribution_config`` (the settings), ``ipg.rollouts`` (sampling and scoring),
``ipg.gradient_pass`` (the per-row gradients), this one (a shard's and a whole call's scores).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch

from ipg.attribution_config import AttributionConfig
from ipg.completeness import completeness_record, points_to_sample
from ipg.component_path import component_candidates, component_partial
from ipg.components import Site, check_site, site_activations
from ipg.errors import InputError
from ipg.gradient_pass import TrajectoryAtSite, from_site, policy_logprobs, positions_mask, rows_for, site_scores
from ipg.models import model_context
from ipg.prompts import PromptFormat, format_examples
from ipg.rollouts import Rollout, prepare_examples, sample_rollouts
from ipg.scores import PartialScores
from ipg.signals import Signal, make_signal

__all__ = [
    "AttributionConfig",
    "Attribution",
    "Rollout",
    "TrajectoryAtSite",
    "attribute",
    "activation_sums",
    "from_site",
    "policy_logprobs",
    "prepare_examples",
    "sample_rollouts",
    "score_meta",
    "shard_scores",
    "site_baselines",
]

# ---------------------------------------------------------------------------------------------------
# the public entry point


@dataclass
class Attribution:
    """Result of an attribution, in-process (``attribute``) or on Ray (``driver.attribute_on_ray``): the
    score table (Arrow, schema ``ipg.scores.SCHEMA``) and diagnostics. In-process also keeps the
    mergeable partial sums, the baselines and the support rollouts; on Ray the trajectories stay in the
    cluster and ``table_ref`` is the table in the object store."""

    table: object
    diagnostics: dict
    config: AttributionConfig
    partial: PartialScores | None = None
    baselines: dict[Site, torch.Tensor] = field(default_factory=dict)
    rollouts: list[Rollout] = field(default_factory=list)  # the alpha = 1 rollouts (support trajectories)
    widths: dict[Site, int] = field(default_factory=dict)  # components per site
    table_ref: object = None

    def to_pandas(self):
        return self.table.to_pandas()

    def scores(self, layer: int, kind: str | None = None) -> np.ndarray:
        """Mean score per component of the site, by index (NaN for components method 'component' did not
        score)."""
        site = Site(layer, kind or self.config.kind)
        if self.partial is not None:
            return self.partial.means(site, self.widths.get(site))
        rows = [
            (i, sc)
            for i, sc, l_, k in zip(*(self.table.column(c).to_pylist() for c in ("index", "score", "layer", "kind")))
            if l_ == site.layer and k == site.kind
        ]
        out = np.full(self.widths.get(site, max(i for i, _ in rows) + 1), np.nan)
        for i, sc in rows:
            out[i] = sc
        return out


def site_baselines(
    model, rollouts: list[Rollout], sites: list[Site], cfg: AttributionConfig, saes=None
) -> dict[Site, torch.Tensor]:
    """Baseline vector per site: zeros, or the mean activation over the path positions of the rollouts."""
    out = {}
    for site in sites:
        if cfg.baseline == "zero":
            out[site] = torch.zeros(check_site(model, site, saes))
            continue
        total, count = activation_sums(model, rollouts, site, cfg, saes)
        out[site] = (total / max(count, 1)).float()
    return out


def activation_sums(
    model, rollouts: list[Rollout], site: Site, cfg: AttributionConfig, saes=None, agree=None
) -> tuple[torch.Tensor, int]:
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
        pieces = site_activations(
            model, site, sequences, saes=saes, batch_tokens=cfg.budget(next(model.parameters()).device)
        )
    for ids, prompt_len, h in pieces:
        mask = positions_mask(prompt_len, len(ids), len(ids), cfg.positions)
        total += h[mask].double().sum(0)
        count += int(mask.sum())
    return total, count


class ShardScores(NamedTuple):
    partial: PartialScores
    paths: dict  # site -> [(alpha, weight, rollouts)]
    timings: dict[str, float]
    skipped: dict[str, str]  # example id -> error, for on_error 'skip' (resample mode: failed on the path)
    rollouts: list[Rollout]  # the alpha = 1 rollouts of the prompts that were scored


def shard_scores(
    model,
    tokenizer,
    rollouts: list[Rollout],
    signal: Signal,
    cfg: AttributionConfig,
    sites: list[Site],
    baselines: dict[Site, torch.Tensor],
    saes: dict | None = None,
    log=None,
    agree=None,
    candidates: dict[Site, list[int]] | None = None,
) -> ShardScores:
    """Partial scores of one shard of prompts from its alpha = 1 rollouts: the unit of work of a
    gradient worker. Every prompt is scored independently, so merging the partials of any sharding
    gives the in-process result. Resample mode draws the shard's path rollouts here; with on_error
    'skip', a prompt whose signal fails anywhere on a path is left out of every site.

    ``agree``: set on a rank of a ZeRO-3 group (see ``site_scores``); resample mode samples
    inside this function, which such a group cannot do in lockstep.

    Method 'component' scores the components named in ``candidates`` (per site, chosen from a PG pass
    over all the prompts, ``component_candidates``) on the per-component path."""
    if cfg.path.per_component:
        if agree is not None:
            raise InputError(
                "attribution.method: 'component' is not available with the deepspeed gradient backend yet "
                "(its forward passes would need the group's lockstep); use the torch backend or method 'pg'"
            )
        if candidates is None or set(candidates) != set(sites):
            raise InputError(
                "attribution.method 'component': needs the candidates of every site, chosen from PG scores "
                "(ipg.component_path.component_candidates)"
            )
        t = time.perf_counter()
        partial = component_partial(model, rollouts, sites, candidates, cfg, baselines, saes)
        (log or (lambda msg: None))(
            f"component path: {sum(map(len, candidates.values()))} candidates in {time.perf_counter() - t:.1f}s"
        )
        return ShardScores(
            partial,
            {site: [(1.0, 1.0, rollouts)] for site in sites},
            {"path_rollouts": 0.0, "gradient": time.perf_counter() - t},
            {},
            rollouts,
        )
    if agree is not None and cfg.resamples:
        raise InputError(
            "attribution.resample: not available with the deepspeed gradient backend yet (path sampling "
            "would need lockstep generation); use the torch backend for resample mode"
        )
    log = log or (lambda msg: None)
    timings = {"path_rollouts": 0.0, "gradient": 0.0}
    paths, skipped = {}, {}
    if cfg.resamples:
        t = time.perf_counter()
        while True:  # path rollouts of all sites first, so a prompt skipped at one site is dropped from all
            examples = [r.example for r in rollouts]
            before = len(skipped)
            paths = {
                site: [
                    (
                        a,
                        w,
                        rollouts
                        if a == 1.0
                        else sample_rollouts(
                            model,
                            tokenizer,
                            examples,
                            signal,
                            cfg,
                            site=site,
                            alpha=a,
                            baseline=baselines[site],
                            saes=saes,
                            skipped=skipped,
                        ),
                    )
                    for a, w in cfg.alphas
                ]
                for site in sites
            }
            if len(skipped) == before:
                break
            rollouts = [r for r in rollouts if r.example["id"] not in skipped]  # per-example seeds: others unchanged
        timings["path_rollouts"] += time.perf_counter() - t
    else:
        paths = {site: [(a, w, rollouts) for a, w in cfg.alphas] for site in sites}
    partial = PartialScores()
    # outside resample mode every site's path holds the same rollouts: one group shares captures and
    # micro-batches; resample mode drew other trajectories per site
    groups = [[site] for site in sites] if cfg.resamples else [sites]
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


def attribute(
    model,
    tokenizer,
    examples: list[dict],
    *,
    signal="accuracy",
    signal_params: dict | None = None,
    saes: dict | None = None,
    run_id: str = "",
    log=None,
    prompt_format: PromptFormat | str = "auto",
    pg_table=None,
    config: AttributionConfig | None = None,
    rollout_cache: dict | None = None,
    **settings,
) -> Attribution:
    """Attribute ``signal`` to the components of ``layers`` (see AttributionConfig for settings).

    ``examples`` are dicts with ``prompt`` (and ``answer`` for accuracy); ``id`` is derived when absent.
    ``prompt_format`` makes them the model's input (``ipg.prompts``: auto, chat, raw or a template; an
    example that already has ``prompt_ids`` keeps them).
    Returns an Attribution whose ``table`` has one row per component (layer, kind, index, score,
    stderr, n_prompts, n_trajectories, rank and the settings).

    ``config``: an ``AttributionConfig`` instead of the keyword settings (as ``driver.attribute_on_ray``
    takes it). ``rollout_cache``: a dict shared by attributions of the same prompts (other signals,
    methods, kinds), so they score the same sampled trajectories instead of sampling them again.

    Method 'component' runs PG first and re-scores each site's top ``candidates`` on the per-component
    path; its table holds those rows only. ``pg_table``: a PG score table of the same examples and
    settings to take them from instead (an experiment that ran PG already).
    """
    if config is not None and settings:
        raise InputError(
            f"attribute: give the settings as config= or as keyword arguments, not both (got {sorted(settings)})"
        )
    cfg = config or AttributionConfig(**{k: tuple(v) if k == "layers" else v for k, v in settings.items()})
    fmt = prompt_format if isinstance(prompt_format, PromptFormat) else PromptFormat(prompt_format)
    skipped: dict[str, str] = {}
    examples = format_examples(
        tokenizer,
        prepare_examples(examples),
        fmt,
        context=model_context(model),
        max_new_tokens=cfg.max_new_tokens,
        on_error=cfg.on_error,
        skipped=skipped,
    )
    sig = make_signal(signal, **(signal_params or {}))
    sig.check(examples)
    sites = [Site(layer, cfg.kind) for layer in cfg.layers]
    for site in sites:
        check_site(model, site, saes)
    log = log or (lambda msg: None)
    note = fmt.note(tokenizer, examples)
    if note:
        log(note)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    base = sample_rollouts(model, tokenizer, examples, sig, cfg, saes=saes, skipped=skipped, cache=rollout_cache)
    timings["rollout"] = time.perf_counter() - t0
    log(f"rollouts: {len(examples)} prompts x {cfg.n_samples} samples in {timings['rollout']:.1f}s")
    if not base:
        raise InputError(
            f"examples: the signal failed on every example (on_error 'skip'); first: {next(iter(skipped.values()))}"
        )
    t = time.perf_counter()
    baselines = site_baselines(model, base, sites, cfg, saes)
    timings["baseline_statistics"] = time.perf_counter() - t
    candidates = None
    if cfg.path.per_component:
        if pg_table is None:
            pg_cfg = dataclasses.replace(cfg, method=cfg.path.candidates_from)
            pg_table = shard_scores(model, tokenizer, base, sig, pg_cfg, sites, baselines, saes, log).partial.table(
                score_meta(model, sig.name, pg_cfg, run_id)
            )
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
        diagnostics["sites"][str(site)] = _completeness(
            model,
            tokenizer,
            examples,
            sig,
            cfg,
            site,
            baselines[site],
            saes,
            paths[site],
            j1,
            float(partial.means(site).sum()),
        )
    timings["completeness"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0
    diagnostics.update(
        timings={k: round(v, 3) for k, v in timings.items()},
        seconds_per_prompt=round(timings["total"] / len(examples), 4),
        mean_reward=j1,
        mixed_groups=sum(len(set(r.rewards)) > 1 for r in base),
        n_prompts=len(examples),
        prompt_format=fmt.describe(tokenizer, examples=examples),
        skipped=skipped,
        n_trajectories=sum(len(r.samples) for r in base),
        mean_generated_tokens=float(np.mean([s.n_tokens for r in base for s in r.samples])),
    )
    widths = {site: check_site(model, site, saes) for site in sites}
    return Attribution(
        partial.table(score_meta(model, sig.name, cfg, run_id)),
        diagnostics,
        cfg,
        partial=partial,
        baselines=baselines,
        rollouts=base,
        widths=widths,
    )


def score_meta(model, signal_name: str, cfg: AttributionConfig, run_id: str = "") -> dict:
    """The settings columns of a score table (``model``: the model, or its fingerprint string)."""
    from ipg.models import model_fingerprint

    return {
        "run_id": run_id,
        "model": model if isinstance(model, str) else model_fingerprint(model),
        "signal": signal_name,
        "method": cfg.method,
        "q": cfg.q if cfg.path.integrates else 1,
        "schedule": cfg.schedule,
        "baseline": cfg.baseline,
        "advantage": cfg.advantage,
        "positions": cfg.positions,
        "seed": cfg.seed,
    }


def _completeness(
    model, tokenizer, examples, sig, cfg, site, baseline, saes, path, j1: float, sum_scores: float
) -> dict:
    """The site's completeness record (ipg.completeness), its J values sampled here."""
    measured = {}
    if cfg.resamples:
        measured["J_path"] = [[a, float(np.mean([np.mean(r.rewards) for r in rolls]))] for a, _, rolls in path]
    for name, alpha in points_to_sample(cfg, measured.get("J_path")):
        rolls = sample_rollouts(
            model, tokenizer, examples, sig, cfg, site=site, alpha=alpha, baseline=baseline, saes=saes
        )
        measured[name] = float(np.mean([np.mean(r.rewards) for r in rolls]))
    return completeness_record(cfg, sum_scores, j1, measured)
