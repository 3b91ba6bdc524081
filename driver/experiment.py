"""The experiment runner behind ``ipg run``: attribute, steer, evaluate against baselines, report.

Stages (each timed under its own name in run.json):
  attribute     the run's method (attribution.method) and the listed others of ipg / pg / component, the
                variants, and SAE features where an SAE exists, on the support set, per seed; the length and
                reflection signals' attributions too
  baselines     random / activation / concept_tokens / reason_score / control_vector selections
  cards         contexts and per-position score terms of the top components (first seed)
  evaluate      greedy accuracy and mean length on the held-out eval split under every steering; a seed's
                evaluations are queued and generated together, packed (ipg.packing), filed in queue order
  stability     Dice overlap of top-p sets across seeds and across disjoint support subsets
  report        report.md and plots, rebuilt from the Parquet files alone
Outputs in cfg.out: scores.parquet, eval.parquet, eval_items.parquet (per prompt), selections.parquet,
massive.parquet, cards.parquet, card_terms.parquet, stability.parquet, run.json, report.md, plots/.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import itertools
import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pyarrow as pa
import yaml

from ipg.attribution import attribute
from ipg.baselines import random_components, top_components
from ipg.cluster.metrics import StageTimer
from ipg.components import Site
from ipg.driver.config import RunConfig, as_dict
from ipg.driver.orchestration.model_access import LocalModel, RayModel
from ipg.driver.report.stages import describe as describe_stages
from ipg.driver.report.stages import stage_split
from ipg.driver.report.tables import RunTables
from ipg.driver.run_inputs import load_saes, signal_params_of, splits_of
from ipg.errors import InputError
from ipg.evaluation import score_items, summary_of
from ipg.files import atomic_write_json, atomic_write_text
from ipg.generation import SamplingParams
from ipg.interventions import INTERVENTIONS, centres
from ipg.massive import RATIO as MASSIVE_RATIO
from ipg.massive import massive_components, median_ratio
from ipg.methods import DEFAULT as DEFAULT_METHOD
from ipg.methods import DEFAULT_WHY as DEFAULT_METHOD_WHY
from ipg.methods import METHODS
from ipg.models import load_model, load_tokenizer, model_context
from ipg.packing import Job
from ipg.prompts import format_examples, longest_prompt
from ipg.provenance import versions
from ipg.scores import dice, select


@dataclass
class _Pending:
    """A queued evaluation; ``copy``: a gamma-1 cell, the original evaluation's outcomes filed again."""

    row: dict
    steering: dict | None
    examples: list[dict]
    line: Callable[[dict], str] | None = None
    copy: bool = False
    result: dict | None = None
    items: list[dict] = field(default_factory=list)
    completions: list[dict] = field(default_factory=list)


class Experiment:
    """One ``ipg run``: per seed, attribute on the support prompts, select, steer, evaluate on the held-out
    prompts against the baselines; then stability, the tables and the report. The model lives in this
    process, or (Ray) in the actors only: the experiment reaches it through ``self.lm``."""

    def __init__(
        self,
        cfg: RunConfig,
        log=print,
        resume: bool = False,
        resume_units: bool | None = None,
        signals: list[str] | None = None,
        run_name: str | None = None,
    ):
        """``run_name``: the ``run`` tag of the run's metric series (default: the output directory's name).
        ``resume``: continue a killed run (needs Ray). ``resume_units`` (default ``resume``): each Ray
        attribution unit continues from its ledger or loads its finished result (a sweep sets it always).
        ``signals``: every signal this experiment will attribute (default: the config's), so the Ray
        actors receive the modules of users' signals."""
        self.cfg, self.log, self.resume = cfg, log, resume
        self.resume_units = resume if resume_units is None else resume_units
        self.timers = StageTimer(observe=False)  # on Ray the pipeline observes its own stages; not twice
        self.attribution_timings: list[dict] = []  # each attribution's diagnostics timings (run.json stages)
        self.session, self.model = None, None
        self.rollout_cache: dict = {}  # unmodified-model samples by prompts and sampling: shared by attributions
        on_ray = cfg.ray.active() or resume
        m = cfg.model
        if on_ray:  # the driver holds the tokenizer only; the actors hold the weights
            self.tokenizer = load_tokenizer(m.name, trust_remote_code=m.trust_remote_code)
            self.saes = load_saes(cfg, load=False)
        else:
            self.model, self.tokenizer = load_model(
                m.name, dtype=m.dtype, device=m.device, trust_remote_code=m.trust_remote_code
            )
            self.saes = load_saes(cfg)
        # formatted once, here: every consumer (both engines, the gradient pass, baselines) reads prompt_ids
        self.prompt_format, self.extractor = cfg.prompt.prompt_format(), cfg.answers.extractor()
        support, evaluation, validation = splits_of(cfg, with_validation=True)
        # checked against the model before anything is sampled: refused, or with on_error skip left out
        self.refused: dict[str, str] = {}
        context = model_context(self.model if self.model is not None else m.name, m.trust_remote_code)

        def formatted(examples, new_tokens):
            return format_examples(
                self.tokenizer,
                examples,
                self.prompt_format,
                context=context,
                max_new_tokens=new_tokens,
                on_error=cfg.attribution.on_error,
                skipped=self.refused,
            )

        self.support_all = formatted(support, cfg.attribution.max_new_tokens)
        self.eval_examples = formatted(evaluation, cfg.evaluation.max_new_tokens)
        # the best of several enhancing gammas is chosen on prompts the eval split does not hold
        self.validation_examples = []
        if len(cfg.evaluation.enhance_gammas) > 1:
            if not validation:
                raise InputError(
                    f"data.n_validation: choosing among enhance gammas {cfg.evaluation.enhance_gammas} needs "
                    f"validation prompts after the first data.n_eval={cfg.data.n_eval} of the eval data, and "
                    "there are none; lower data.n_eval, raise data.n_validation, or evaluate one enhance gamma"
                )
            self.validation_examples = formatted(validation, cfg.evaluation.max_new_tokens)
        for example, why in self.refused.items():
            log(f"skipped {example} (on_error skip): {why}")
        rendered = self.prompt_format.note(
            self.tokenizer, self.support_all + self.eval_examples + self.validation_examples
        )
        if rendered:
            log(rendered)
        self.tables = RunTables()
        self.said_candidates = False  # the log says once that attribution.candidates was raised
        self.pending: list[_Pending] = []  # queued evaluations (queue, flush)
        self.site_means: dict = {}  # seed -> {site: support mean per component} (centred interventions)
        self.magnitudes: dict = {}  # (layer, seed) -> mean |activation| over the layer's median, per coordinate
        self.main_tables: dict[int, pa.Table] = {}  # the run's method's accuracy scores per seed (for stability)
        if on_ray:
            from ipg.driver.orchestration.pipeline import RaySession
            from ipg.driver.orchestration.rollout_choice import resolve

            cfg = self.cfg = dataclasses.replace(cfg, ray=resolve(cfg.ray, cfg.model, log))  # 'auto' decided once, here

            longest = longest_prompt(self.tokenizer, self.support_all + self.eval_examples)
            new_tokens = max(cfg.attribution.max_new_tokens, cfg.evaluation.max_new_tokens)
            self.session = RaySession(
                cfg.model,
                cfg.ray,
                log,
                signals=signals or [cfg.signal],
                max_tokens=longest + new_tokens,
                run=run_name or Path(cfg.out).name,
            )
            self.log(
                f"ray: {cfg.ray.rollout_workers} rollout ({cfg.ray.rollout_backend}) + {cfg.ray.gradient_workers} gradient workers on "
                f"{self.session.info['address']} (dashboard {self.session.info['dashboard_url']})"
            )
            self.lm = RayModel(self.session, cfg.evaluation.batch_size)
        else:
            self.lm = LocalModel(self.model, self.tokenizer, self.saes, cfg.evaluation.batch_size, log)
            log(
                "rollouts and evaluation: the HF loop in this process"
                + (
                    "; vLLM is installed: --ray.enabled=true --ray.rollout_backend=auto runs them in vLLM engines"
                    if importlib.util.find_spec("vllm")
                    else ""
                )
            )
        sites = [Site(layer, cfg.attribution.kind) for layer in cfg.attribution.layers]
        sites += [Site(layer, "sae") for layer in sorted(set(cfg.model.saes) & set(cfg.attribution.layers))]
        self.described = self.lm.describe(sites)  # the model's fingerprint and each site's width

    # -- the public steps (``ipg sweep`` composes them too) -------------------------------------------

    def support(self, seed: int) -> list[dict]:
        """The seed's support prompts, drawn from the support pool."""
        n = min(self.cfg.data.n_support, len(self.support_all))
        return random.Random(f"support/{seed}").sample(self.support_all, n)

    def width(self, site: Site) -> int:
        key = str(site)
        if key not in self.described["widths"]:
            self.described["widths"][key] = self.lm.describe([site])["widths"][key]
        return self.described["widths"][key]

    def attribute(
        self,
        examples,
        *,
        signal,
        layers,
        seed,
        method=None,
        kind=None,
        signal_params=None,
        tag="",
        overrides: dict | None = None,
        pg_table=None,
    ):
        """One attribution, on Ray or here. ``pg_table``: method 'component' takes its candidates from these
        PG scores (of the same support prompts) instead of running PG again."""
        a = dataclasses.replace(
            self.cfg.attribution,
            layers=tuple(layers),
            kind=kind or self.cfg.attribution.kind,
            method=method or self.cfg.attribution.method,
            seed=seed,
        )
        a = dataclasses.replace(a, **(overrides or {}))
        if a.path.per_component:  # it selects among its candidates: at least as many as the largest p
            needed = max(a.candidates, *self.cfg.evaluation.p, self.cfg.cards.components)
            if needed > a.candidates and not self.said_candidates:
                self.said_candidates = True
                self.log(
                    f"attribution.candidates: raised from {a.candidates} to {needed}, the largest p or card count "
                    f"the run evaluates (method 'component' selects only among its candidates)"
                )
            a = dataclasses.replace(a, candidates=needed)
        signal_params = signal_params_of(self.cfg, signal, signal_params)
        run_id = f"{signal}-{a.method}-{a.kind}-seed{seed}{tag}"
        with self.timers("attribute"):
            if self.session is not None:  # one resumable unit per attribution under out/attributions/
                res = self.session.attribute(
                    examples,
                    a,
                    signal=signal,
                    signal_params=signal_params,
                    run_id=run_id,
                    out_dir=Path(self.cfg.out) / "attributions" / run_id,
                    resume=self.resume_units,
                    pg_table=pg_table,
                )
            else:
                res = attribute(
                    self.model,
                    self.tokenizer,
                    examples,
                    signal=signal,
                    signal_params=signal_params,
                    saes=self.saes,
                    run_id=run_id,
                    pg_table=pg_table,
                    rollout_cache=self.rollout_cache,
                    log=lambda line: self.log(f"    {run_id}: {line}"),  # its stages as they end
                    **dataclasses.asdict(a),
                )
        self.tables.scores.append(res.table)
        self.attribution_timings.append(res.diagnostics.get("timings", {}))
        self.log(
            f"  attributed {run_id} layers {list(layers)}: "
            f"{res.diagnostics['seconds_per_prompt']:.2f} s/prompt, {res.diagnostics['mixed_groups']}/{len(examples)} mixed groups"
        )
        return res

    def evaluate(self, steering: dict | None, examples: list[dict] | None = None, **row) -> dict:
        """Greedy accuracy and length on the eval split (or ``examples``) under ``steering`` (None,
        {"scale": components, "gamma"} or {"add": layer, "vector", "coefficient"}), generated where the
        model lives (on Ray: split across the rollout actors), with any queued evaluations."""
        self.queue(steering, examples, **row)
        return self.flush()[-1]

    def queue(self, steering: dict | None, examples: list[dict] | None = None, *, line=None, **row) -> None:
        """Queue an evaluation for the next ``flush``, which generates every queued one together (packed
        into shared batches, each row steered by its own evaluation's variant) and files their rows in the
        order queued. ``line(result)``: its progress line, logged as it completes."""
        row.setdefault("draw", 0)
        self.pending.append(_Pending(row, steering, self.eval_examples if examples is None else examples, line))

    def flush(self) -> list[dict]:
        """Generate and score the queued evaluations; file their rows (eval.parquet, eval_items.parquet) in
        the order they were queued, and return their eval rows."""
        pending, self.pending = self.pending, []
        todo = [p for p in pending if not p.copy]
        e = self.cfg.evaluation
        params = SamplingParams(n=1, greedy=True, max_new_tokens=e.max_new_tokens)
        words = tuple(self.cfg.baselines.reflection_words)

        def done(k: int, samples) -> None:
            p = todo[k]
            items = score_items(p.examples, samples, words, self.extractor)
            s = summary_of(items, len(p.examples))
            p.result = {
                **p.row,
                "accuracy": s.accuracy,
                "mean_length": s.mean_length,
                "n": s.n_examples,
                "reflection_share": s.keyword_share,
                "cut_off_share": s.unfinished_share,
                "loop_share": s.loop_share,
                "answered_share": 1.0 - s.no_answer_share,
            }
            # per prompt: intervals and paired comparisons are computed from these
            p.items = [
                {
                    **p.row,
                    "example_id": it.example_id,
                    "correct": it.correct,
                    "answered": it.answered,
                    "length": it.length,
                    "reflection": it.keyword,
                    "finished": it.finished,
                    "looped": it.looped,
                }
                for it in items
            ]
            p.completions = self._kept(p, samples, items)
            if p.line is not None:
                self.log(p.line(p.result))

        if todo:
            if len(todo) > 1 and e.pack_tokens > 0:
                self.log(f"  evaluating {len(todo)} steerings together (packed up to {e.pack_tokens} tokens per batch)")
            with self.timers("evaluation"):
                self.lm.generate_many(
                    [Job(p.examples, p.steering) for p in todo], params, e.positions, e.pack_tokens, done
                )
        out = []
        for p in pending:
            if p.copy:
                self._copy_original(p)
                if p.line is not None:
                    self.log(p.line(p.result))
            self.tables.evals.append(p.result)
            self.tables.items += p.items
            self.tables.completions += p.completions
            out.append(p.result)
        return out

    def _kept(self, p: _Pending, samples, items) -> list[dict]:
        """The completions the report shows side by side: the first ``evaluation.completions`` eval prompts of an
        evaluation of the first seed (random: its first draw), with the stated answer and its verdict."""
        row = p.row
        if row["experiment"] == "validation" or row["seed"] != self.cfg.seeds[0] or row["draw"] != 0:
            return []
        out = []
        for position, (ex, group, it) in enumerate(zip(p.examples[: self.cfg.evaluation.completions], samples, items)):
            s = group[0]
            prompt = ex.get("prompt") if isinstance(ex.get("prompt"), str) else self.tokenizer.decode(ex["prompt_ids"])
            out.append(
                {
                    **row,
                    "position": position,
                    "example_id": it.example_id,
                    "prompt": prompt,
                    "completion": s.text,
                    "answer": self.extractor.extract(s.text),
                    "correct": it.correct,
                    "length": it.length,
                    "finished": it.finished,
                }
            )
        return out

    # -- helpers ---------------------------------------------------------------------------------------

    def _attribute_methods(self, examples, methods: set, **kw) -> dict:
        """Attributions of ``methods`` (of ipg / pg / component) on the same prompts, by method. PG runs once,
        before the component path, which re-scores PG's top candidates from its table."""
        later = [m for m in METHODS if m in methods and METHODS[m].per_component]  # they re-score another's top
        sources = {METHODS[m].candidates_from for m in later}
        first = [m for m in METHODS if (m in methods or m in sources) and m not in later]
        results = {}
        for m in first + later:
            source = METHODS[m].candidates_from
            results[m] = self.attribute(examples, method=m, pg_table=results[source].table if source else None, **kw)
        return results

    def _rollouts(self, res, examples, signal: str | None = None, signal_params: dict | None = None):
        """The support rollouts of an attribution of ``signal`` (default: the run's); a Ray run keeps them in
        the cluster, so they are drawn again there (sampling is seeded per example and sample: the same
        trajectories) and scored by that signal."""
        if res.rollouts:
            return res.rollouts
        signal = signal or self.cfg.signal
        with self.timers("rollout"):
            return self.lm.rollouts(examples, res.config, signal, signal_params_of(self.cfg, signal, signal_params))

    def _centres(self, components, rollouts, acfg, seed: int) -> list[float]:
        """Each component's mean over the decision positions of the seed's support rollouts (the centre of the
        'mean' and 'add' interventions), one support pass per site and seed."""
        means = self.site_means.setdefault(seed, {})
        for site in {c.site for c in components} - set(means):
            site_cfg = dataclasses.replace(acfg, baseline="mean", layers=(site.layer,), kind=site.kind)
            with self.timers("baseline_statistics"):
                means[site] = self.lm.site_baseline(rollouts, site, site_cfg)
        return centres(means, components)

    def _random(self, site: Site, p: int, seed: int, draw: int = 0):
        return random_components(self.width(site), site, p, seed, draw=draw)

    def _sweep(self, experiment, method, layer, p, seed, components, gammas, draw: int = 0, how: dict | None = None):
        """Queue the selection's evaluations over the gammas; ``how``: the intervention and its centres (none:
        scaling about zero)."""
        self._note_selection(experiment, method, layer, p, seed, draw, components)
        for gamma in gammas:
            row = dict(experiment=experiment, method=method, layer=layer, p=p, gamma=gamma, seed=seed, draw=draw)

            def line(r, experiment=experiment, method=method, gamma=gamma):
                return (
                    f"    {experiment:10s} {method:15s} layer {layer} p {p:3d} gamma {gamma:4.2f}: "
                    f"acc {100 * r['accuracy']:5.1f}%  len {r['mean_length']:5.1f}"
                    + (f"  (draw {draw})" if draw else "")
                )

            if gamma == 1.0:  # scaling by exactly 1 is the identity: the unsteered evaluation, not generated again
                self.pending.append(_Pending(row, None, [], line, copy=True))
            else:
                self.queue({"scale": components, "gamma": gamma, **(how or {})}, line=line, **row)
            if experiment == "accuracy" and gamma > 1 and self.validation_examples:
                self.queue(
                    {"scale": components, "gamma": gamma},
                    self.validation_examples,
                    **{**row, "experiment": "validation"},
                )

    def _copy_original(self, p: "_Pending") -> None:
        """The original evaluation's outcomes filed under ``p.row`` (a gamma-1 cell of a sweep): greedy decoding
        of an unedited model gives the same tokens, so they are copied, not generated again."""
        original = [r for r in self.tables.items if r["method"] == "original" and r["seed"] == self.cfg.seeds[0]]
        p.items = [{**r, **p.row} for r in original]
        summary = next(r for r in self.tables.evals if r["method"] == "original" and r["seed"] == self.cfg.seeds[0])
        p.result = {**summary, **p.row}

    def _cards(self, res, rollouts, site: Site, sequences, signal: str | None = None) -> None:
        """Cards of the method's top components at this layer (ipg.cards): contexts and per-position terms."""
        c = self.cfg.cards
        top = [x.index for x in select(res.table, c.components, layer=site.layer, kind=site.kind)]
        mixed = [r for r in rollouts if any(a != 0 for a in r.advantages)][: c.prompts]
        cfg = dataclasses.replace(res.config, layers=(site.layer,))
        with self.timers("cards"):
            baseline = self.lm.site_baseline(rollouts, site, cfg)  # the path's, over all the support rollouts
            contexts, terms = self.lm.cards(site, sequences, top, c.contexts, mixed, cfg, baseline)
        ratio = self.magnitudes.get((site.layer, cfg.seed))
        signal = signal or self.cfg.signal
        for rank, i in enumerate(top):
            self.tables.cards.append(
                {
                    "layer": site.layer,
                    "kind": site.kind,
                    "rank": rank,
                    "index": i,
                    "method": cfg.method,
                    "signal": signal,
                    "median_ratio": float(ratio[i]) if ratio is not None else None,
                    "contexts": json.dumps(contexts[i]),
                }
            )
        self.tables.card_terms += [{"layer": site.layer, "kind": site.kind, "signal": signal, **t} for t in terms]

    def _note_massive(self, site: Site, seed: int, magnitude) -> None:
        """The layer's massive-activation coordinates on this seed's support trajectories (residual sites)."""
        if site.kind != "residual":
            return
        ratio = median_ratio(magnitude)
        self.magnitudes[(site.layer, seed)] = ratio
        flagged = massive_components(magnitude)
        self.tables.massive += [
            {"layer": site.layer, "seed": seed, "index": i, "median_ratio": float(ratio[i])} for i in flagged
        ]
        if flagged:
            self.log(
                f"  layer {site.layer}: massive-activation coordinates {flagged} "
                f"({', '.join(f'{ratio[i]:.0f}x' for i in flagged)} the median mean |activation|)"
            )

    def _note_selection(self, experiment, method, layer, p, seed, draw, components) -> None:
        ratio = self.magnitudes.get((layer, seed))
        for rank, c in enumerate(components):
            r = float(ratio[c.index]) if ratio is not None and c.kind == "residual" else None
            self.tables.selections.append(
                {
                    "experiment": experiment,
                    "method": method,
                    "layer": layer,
                    "kind": c.kind,
                    "p": p,
                    "seed": seed,
                    "draw": draw,
                    "rank": rank,
                    "index": c.index,
                    "median_ratio": r,
                    "massive": r is not None and r >= MASSIVE_RATIO,
                }
            )

    # -- stages ----------------------------------------------------------------------------------------

    def run(self) -> Path:
        try:
            return self._run()
        finally:
            if self.session is not None:
                self.session.close()

    def _run(self) -> Path:
        cfg = self.cfg
        out = Path(cfg.out)
        start = time.perf_counter()
        atomic_write_text(
            out / "config.yaml", yaml.safe_dump(json.loads(json.dumps(as_dict(cfg), default=list)), sort_keys=False)
        )
        original = self.evaluate(
            None, experiment="accuracy", method="original", layer=-1, p=0, gamma=1.0, seed=cfg.seeds[0]
        )
        self.log(f"original: accuracy {100 * original['accuracy']:.1f}%, mean length {original['mean_length']:.1f}")
        first = [r for r in self.tables.items if r["method"] == "original"]
        for seed in cfg.seeds[1:]:
            self.tables.evals.append({**original, "seed": seed})  # greedy decoding: identical for every seed
            self.tables.items += [{**r, "seed": seed} for r in first]
        for seed in cfg.seeds:
            self.log(f"seed {seed}")
            self._accuracy_experiment(seed)
            for name in ("length", "reflection"):
                if getattr(cfg, name).enabled:
                    self._control_experiment(name, seed)
            self.flush()  # the seed's evaluations, generated together
        if cfg.stability.enabled:
            with self.timers("stability"):
                self._stability()
        self._write(out, time.perf_counter() - start)
        return out

    def _accuracy_experiment(self, seed: int) -> None:
        cfg, a = self.cfg, self.cfg.attribution
        support = self.support(seed)
        methods = set(cfg.baselines.methods)
        main = a.method  # the run's own selection method; the others of ipg / pg / component run when listed
        results = self._attribute_methods(
            support, {main} | (set(METHODS) & methods), signal=cfg.signal, layers=a.layers, seed=seed
        )
        self.main_tables[seed] = results[main].table
        variants = {
            name: self.attribute(
                support, signal=cfg.signal, layers=a.layers, seed=seed, tag=f"-{name}", overrides=overrides
            )
            for name, overrides in cfg.variants.items()
        }
        sae_layers = sorted(set(self.saes) & set(a.layers))
        sae_res = (
            self.attribute(support, signal=cfg.signal, layers=sae_layers, seed=seed, kind="sae", method=main)
            if sae_layers
            else None
        )
        rollouts = self._rollouts(results[main], support)
        sequences = [(s.prompt_ids + s.completion_ids, len(s.prompt_ids)) for r in rollouts for s in r.samples]
        gammas = cfg.evaluation.enhance_gammas + cfg.evaluation.suppress_gammas
        for layer in a.layers:
            site = Site(layer, a.kind)
            with self.timers("baseline_statistics"):
                scores = {}
                magnitude = self.lm.activation_scores(sequences, site)  # flags, and the activation baseline
                self._note_massive(site, seed, magnitude)
                if "activation" in methods:
                    scores["activation"] = magnitude
                if "concept_tokens" in methods:
                    scores["concept_tokens"] = self.lm.contrast_scores(
                        sequences, site, tuple(cfg.baselines.concept_tokens)
                    )
                if layer in sae_layers and "reason_score" in methods:
                    scores["reason_score"] = self.lm.contrast_scores(
                        sequences, Site(layer, "sae"), tuple(cfg.baselines.reflection_words)
                    )
            if cfg.cards.enabled and seed == cfg.seeds[0]:
                self._cards(results[main], rollouts, site, sequences)
            for p in cfg.evaluation.p:
                chosen = {
                    m: select(res.table, p, layer=layer, kind=a.kind)
                    for m, res in results.items()
                    if m == main or m in methods
                }
                chosen.update({name: select(res.table, p, layer=layer, kind=a.kind) for name, res in variants.items()})
                for name in ("activation", "concept_tokens"):
                    if name in scores:
                        chosen[name] = top_components(scores[name], site, p)
                if sae_res is not None and layer in sae_layers:
                    chosen[f"{main}_sae"] = select(sae_res.table, p, layer=layer, kind="sae")
                    if "reason_score" in scores:
                        chosen["reason_score"] = top_components(scores["reason_score"], Site(layer, "sae"), p)
                for method, components in chosen.items():
                    self._sweep("accuracy", method, layer, p, seed, components, gammas)
                if "random" in methods:  # several draws per seed: random's spread is part of the comparison
                    for draw in range(cfg.evaluation.random_draws):
                        self._sweep(
                            "accuracy", "random", layer, p, seed, self._random(site, p, seed, draw), gammas, draw=draw
                        )
            if "control_vector" in methods:
                eos = self.tokenizer.eos_token_id
                correct = [
                    s.prompt_ids + [t for t in s.completion_ids if t != eos]
                    for r in rollouts
                    for s, reward in zip(r.samples, r.rewards)
                    if reward > 0
                ]
                with self.timers("baseline_statistics"):
                    vector, separation = self.lm.control_vector(correct[:64], layer, seed)
                for gamma in cfg.evaluation.enhance_gammas:  # enhance only, as in the paper
                    self.queue(
                        {"add": layer, "vector": vector, "coefficient": (gamma - 1.0) * separation},
                        experiment="accuracy",
                        method="control_vector",
                        layer=layer,
                        p=0,
                        gamma=gamma,
                        seed=seed,
                        line=lambda r, layer=layer, gamma=gamma: (
                            f"    accuracy   control_vector  layer {layer}       "
                            f"gamma {gamma:4.2f}: acc {100 * r['accuracy']:5.1f}%"
                        ),
                    )

    def _control_experiment(self, name: str, seed: int) -> None:
        """Attribute the ``name`` signal (length, reflection) and steer its top components over the gammas,
        beside the baselines the section lists (``methods``)."""
        cfg = self.cfg
        c = getattr(cfg, name)
        params = dict(c.signal_params)
        if name == "reflection" and "keywords" not in params:
            params["keywords"] = list(cfg.baselines.reflection_words)
        main, support = cfg.attribution.method, self.support(seed)
        results = self._attribute_methods(
            support,
            {main} | (set(METHODS) & set(c.methods)),
            signal=name,
            layers=c.layers,
            seed=seed,
            signal_params=params,
        )
        sae_layers = sorted(set(self.saes) & set(c.layers)) if "sae" in c.methods else []
        sae_res = (
            self.attribute(
                support, signal=name, layers=sae_layers, seed=seed, signal_params=params, method=main, kind="sae"
            )
            if sae_layers
            else None
        )
        centred = INTERVENTIONS.get(c.intervention, f"{name}.intervention").needs_centre
        need_rollouts = cfg.cards.enabled and seed == cfg.seeds[0] or "activation" in c.methods or centred
        rollouts = self._rollouts(results[main], support, name, params) if need_rollouts else None
        sequences = [(s.prompt_ids + s.completion_ids, len(s.prompt_ids)) for r in rollouts or [] for s in r.samples]
        for layer in c.layers:
            site = Site(layer, cfg.attribution.kind)
            if cfg.cards.enabled and seed == cfg.seeds[0]:
                self._cards(results[main], rollouts, site, sequences, signal=name)
            chosen = {
                m: select(res.table, c.p, layer=layer, kind=site.kind)
                for m, res in results.items()
                if m == main or m in c.methods
            }
            if "activation" in c.methods:
                with self.timers("baseline_statistics"):
                    chosen["activation"] = top_components(self.lm.activation_scores(sequences, site), site, c.p)
            if sae_res is not None and layer in sae_layers:
                chosen[f"{main}_sae"] = select(sae_res.table, c.p, layer=layer, kind="sae")
            if "random" in c.methods:
                for draw in range(c.random_draws):
                    chosen[("random", draw)] = self._random(site, c.p, seed, draw)
            for method, components in chosen.items():
                method, draw = method if isinstance(method, tuple) else (method, 0)
                how = {"intervention": c.intervention}
                if centred:
                    how["centre"] = self._centres(components, rollouts, results[main].config, seed)
                self._sweep(name, method, layer, c.p, seed, components, c.gammas, draw=draw, how=how)

    def _stability(self) -> None:
        cfg, a = self.cfg, self.cfg.attribution
        p = cfg.stability.p
        for layer in a.layers:
            top = {seed: select(t, p, layer=layer, kind=a.kind) for seed, t in self.main_tables.items()}
            for s1, s2 in itertools.combinations(cfg.seeds, 2):
                self.tables.stability.append(
                    {
                        "comparison": "seeds",
                        "layer": layer,
                        "p": p,
                        "a": f"seed {s1}",
                        "b": f"seed {s2}",
                        "dice": dice(top[s1], top[s2]),
                    }
                )
        # disjoint halves of the support pool, same seed: how much the selection depends on the prompts
        pool = random.Random("stability-halves").sample(self.support_all, len(self.support_all))
        n = min(cfg.data.n_support, len(pool) // 2)
        halves = [pool[:n], pool[n : 2 * n]]
        results = [
            self.attribute(
                h, signal=cfg.signal, layers=a.layers, seed=cfg.seeds[0], tag=f"-half{name}", method=a.method
            )
            for name, h in zip("AB", halves)
        ]
        for layer in a.layers:
            sets = [select(r.table, p, layer=layer, kind=a.kind) for r in results]
            self.tables.stability.append(
                {
                    "comparison": "support subsets",
                    "layer": layer,
                    "p": p,
                    "a": "half A",
                    "b": "half B",
                    "dice": dice(*sets),
                }
            )

    def setup(self) -> dict:
        """How examples became model inputs and how answers were scored (run.json, the report)."""
        d = self.cfg.data
        return {
            "model": self.described["model"],
            "signal": self.cfg.signal,
            "prompt": self.prompt_format.describe(
                self.tokenizer, self.eval_examples[0], self.support_all + self.eval_examples + self.validation_examples
            ),
            "answers": self.extractor.describe(),
            "attribution": {
                **{
                    k: getattr(self.cfg.attribution, k)
                    for k in (
                        "method",
                        "kind",
                        "layers",
                        "baseline",
                        "schedule",
                        "q",
                        "n_samples",
                        "advantage",
                        "resample",
                        "candidates",
                    )
                },
                **({"why": DEFAULT_METHOD_WHY} if self.cfg.attribution.method == DEFAULT_METHOD else {}),
            },
            # how gamma acts in each experiment (ipg.interventions); accuracy scales about zero
            "interventions": {
                "accuracy": "scale",
                "length": self.cfg.length.intervention,
                "reflection": self.cfg.reflection.intervention,
            },
            "data": {
                "support": d.support or "organism support split",
                "eval": d.eval or "organism eval split",
                "fields": d.fields,
                "reference": d.reference,
            },
        }

    def _write(self, out: Path, seconds: float) -> None:
        from ipg.driver.report.write import write_report

        setup = self.setup()
        self.tables.write(out, setup)
        with self.timers("report"):
            write_report(out)
        stages = stage_split(self.timers.seconds, self.attribution_timings, seconds, self.session is not None)
        atomic_write_json(
            out / "run.json",
            {
                "command": "run",
                "config": as_dict(self.cfg),
                **setup,  # setup: model, signal, prompt, answers, data
                "n_support_pool": len(self.support_all),
                "n_eval": len(self.eval_examples),
                "refused_examples": self.refused,
                "timings": {k: round(v, 2) for k, v in self.timers.seconds.items()},
                "seconds": round(seconds, 1),
                "stages": stages,
                "ray": self.session.info if self.session is not None else None,
                "rollout_backend": self.cfg.ray.rollout_backend
                if self.session is not None
                else "hf",  # auto: as resolved
                "evaluation_engine": self.cfg.ray.rollout_backend if self.session is not None else "hf",
                "versions": versions(),
            },
        )
        self.log(describe_stages(stages))
        self.log(f"wrote {out}/report.md ({seconds:.0f} s)")


def run_experiment(cfg: RunConfig, log=print, resume: bool = False) -> Path:
    return Experiment(cfg, log, resume).run()
