"""The reasoning-strength study: which selection, site, layer and intervention lets gamma set how long a real
model reasons, without breaking it, and which one ``ipg run`` should ship.

    ipg study strength --out runs/strength      # SmolLM2-135M-Instruct, word problems, ~1 h on 2 cores

Design, fixed before the data (``RULE`` is the text the results page prints):

- **Candidates**: ``site:by`` selections (p components of a block's residual, MLP, SAE or attention site,
  by signed score ``top`` or by ``abs``; or ``heads``: whole attention heads, each scored as one unit),
  each under every intervention of ``ipg.interventions`` (scale about zero, about the support mean, a step
  along the mean), at every gamma of the grid. Each is attributed with the run's method on the length
  signal, per seed, on the seed's support prompts.
- **Random**: per site, seed and intervention, p random components (as many random whole heads for a heads
  selection) under the same intervention and gammas.
- **Splits**: the eval prompts are cut in two: the first ``n_dev`` choose, the next ``n_test`` report.
  Nothing measured on the test prompts feeds the choice.
- **Outcomes** per trace (greedy): tokens generated, cut off at the limit, loops (``ipg.evaluation.loops``),
  states an answer, correct. Intervals: 95% two-way bootstrap over prompts and seeds, paired on prompts.
"""

from __future__ import annotations

import dataclasses
import random
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ipg.components import ComponentId, head_dim, head_groups
from ipg.driver.report.strength import BREAKAGE
from ipg.driver.strength_config import RULE, StudyConfig, candidate
from ipg.driver.strength_page import page
from ipg.errors import InputError
from ipg.evaluation import LOOP_REPEATS, LOOP_TOKENS, score_items
from ipg.files import atomic_write_bytes, atomic_write_json, atomic_write_text
from ipg.generation import SamplingParams
from ipg.intervals import difference_interval, mean_interval
from ipg.massive import median_ratio
from ipg.packing import Job, generate_packed
from ipg.scores import select


class Study:
    def __init__(self, sc: StudyConfig, log=print):
        import torch

        from ipg.driver.config import load_config
        from ipg.driver.experiment import Experiment

        torch.set_num_threads(sc.threads)  # explicit: a second torch process on the same cores slows both many times
        self.sc, self.log = sc, log
        cfg = load_config(sc.config, [f"data.n_support={sc.n_support}", f"data.n_eval={sc.n_dev + sc.n_test}"])
        cfg = dataclasses.replace(cfg, out=sc.out, seeds=list(sc.seeds))
        self.exp = Experiment(cfg, log=log)
        if self.exp.session is not None:
            raise InputError("study: runs in one process; set ray.enabled: false in the config")
        for site, _ in map(candidate, sc.candidates):
            if site.kind == "sae" and site.layer not in self.exp.saes:
                raise InputError(f"study.candidates: {site} needs model.saes to name an SAE for layer {site.layer}")
        ev = self.exp.eval_examples
        if len(ev) < sc.n_dev + sc.n_test:
            raise InputError(
                f"study.n_dev + n_test: the eval data holds {len(ev)} prompts, fewer than {sc.n_dev + sc.n_test}"
            )
        self.split = {"dev": ev[: sc.n_dev], "test": ev[sc.n_dev : sc.n_dev + sc.n_test]}
        self.params = SamplingParams(greedy=True, max_new_tokens=sc.max_new_tokens)
        self.selections: dict = {}  # (seed, candidate) -> components
        self.stats: dict = {}  # (seed, site) -> support statistics
        self.rows: list[dict] = []
        self.seeds_of = {"dev": sc.dev_seeds, "test": sc.seeds}  # the choice uses dev_seeds' selections
        self.gammas_of: dict = {}
        self.timings: dict[str, float] = {}

    # -- attribution ---------------------------------------------------------------------------------------

    def attribute(self) -> None:
        sc, exp = self.sc, self.exp
        start = time.perf_counter()
        for seed in sc.seeds:
            support = exp.support(seed)
            for site in sorted({candidate(c)[0] for c in sc.candidates}):
                res = exp.attribute(support, signal="length", layers=[site.layer], seed=seed, kind=site.kind)
                # the centres of 'mean' and 'add': each component's mean over the support decision positions
                rollouts = res.rollouts
                sequences = [(x.prompt_ids + x.completion_ids, len(x.prompt_ids)) for r in rollouts for x in r.samples]
                self.stats[seed, site] = {
                    "mean": exp.lm.site_baseline(
                        rollouts, site, dataclasses.replace(res.config, baseline="mean")
                    ).numpy(),
                    "mean_abs": exp.lm.activation_scores(sequences, site),
                }
                for spec in sc.candidates:
                    s, by = candidate(spec)
                    if s == site:
                        self.selections[seed, spec] = (
                            self._heads(res, site) if by == "heads" else self._top(res, site, by)
                        )
                        self.selections[seed, random_of(spec)] = self._random(site, seed, by)
        self.timings["attribution"] = time.perf_counter() - start

    def _top(self, res, site, by: str) -> tuple[list[ComponentId], list[float]]:
        comps = select(res.table, self.sc.p, by=by, layer=site.layer, kind=site.kind)
        scores = {r["index"]: r["score"] for r in res.table.to_pylist()}
        return comps, [scores[c.index] for c in comps]

    def _heads(self, res, site) -> tuple[list[ComponentId], list[float]]:
        """The ``heads`` attention heads whose joint ablation moves the length surrogate most (per-head path
        scores, mean over the support prompts), every coordinate of each; the scores are the heads'."""
        from ipg.component_path import head_scores

        groups = head_groups(self.exp.model, site.layer)
        if self.sc.heads > len(groups):
            raise InputError(f"study.heads: block {site.layer} has {len(groups)} heads, fewer than {self.sc.heads}")
        baseline = self.exp.lm.site_baseline(res.rollouts, site, res.config)
        per_head = head_scores(self.exp.model, res.rollouts, site.layer, res.config, baseline).mean(0)
        chosen = sorted(range(len(groups)), key=lambda k: (-per_head[k], k))[: self.sc.heads]
        comps = [ComponentId(site.layer, site.kind, i) for k in chosen for i in groups[k]]
        return comps, [float(per_head[k]) for k in chosen]

    def _random(self, site, seed: int, by: str) -> tuple[list[ComponentId], None]:
        """p random components of the site, or for a heads selection as many random whole heads."""
        rng = random.Random(f"strength/random/{site}/{seed}" + ("/heads" if by == "heads" else ""))
        if by == "heads":
            groups = head_groups(self.exp.model, site.layer)
            return [
                ComponentId(site.layer, site.kind, i)
                for k in sorted(rng.sample(range(len(groups)), self.sc.heads))
                for i in groups[k]
            ], None
        width = len(self.stats[seed, site]["mean"])
        return [ComponentId(site.layer, site.kind, i) for i in sorted(rng.sample(range(width), self.sc.p))], None

    # -- evaluation ----------------------------------------------------------------------------------------

    def _steering(self, seed: int, spec: str, intervention: str, gamma: float) -> dict:
        comps, _ = self.selections[seed, spec]
        mean = self.stats[seed, comps[0].site]["mean"]
        return {
            "scale": comps,
            "gamma": gamma,
            "intervention": intervention,
            "centre": [float(mean[c.index]) for c in comps],
        }

    def evaluate(self, split: str, settings: list[tuple[str, str]], gammas) -> None:
        """Generate the split's prompts unsteered and under every (selection, intervention) x gamma x seed."""
        examples = self.split[split]
        self.gammas_of[split] = tuple(gammas)
        jobs, keys = [Job(examples)], [dict(selection="unsteered", intervention="none", gamma=1.0, seed=-1)]
        for spec, intervention in settings:
            for seed in self.seeds_of[split]:
                for gamma in gammas:
                    jobs.append(Job(examples, self._steering(seed, spec, intervention, gamma)))
                    keys.append(dict(selection=spec, intervention=intervention, gamma=gamma, seed=seed))
        self.log(f"study: {split}: {len(jobs)} evaluations x {len(examples)} prompts")
        start, done_jobs = time.perf_counter(), [0]

        def done(k, samples):
            done_jobs[0] += 1
            if done_jobs[0] % 10 == 0 or done_jobs[0] == len(jobs):
                self.log(
                    f"study: {split}: {done_jobs[0]}/{len(jobs)} evaluations done, {time.perf_counter() - start:.0f} s"
                )

        c = self.exp.cfg.evaluation
        results = generate_packed(
            self.exp.model,
            self.exp.tokenizer,
            jobs,
            self.params,
            batch_size=c.batch_size,
            pack_tokens=c.pack_tokens,
            saes=self.exp.saes,
            done=done,
        )
        for key, samples in zip(keys, results):
            for it in score_items(examples, samples, (), self.exp.extractor):
                self.rows.append(
                    dict(
                        split=split,
                        **key,
                        example_id=it.example_id,
                        length=it.length,
                        cut_off=not it.finished,
                        looped=it.looped,
                        answered=it.answered,
                        correct=it.correct,
                    )
                )
        self.timings[f"evaluation_{split}"] = time.perf_counter() - start

    # -- the rule ------------------------------------------------------------------------------------------

    def matrix(self, split: str, selection: str, intervention: str, gamma: float, field: str) -> np.ndarray:
        """Outcome ``field`` as (seeds, prompts); the unsteered arm is one greedy pass, repeated per seed."""
        ids = [str(ex["id"]) for ex in self.split[split]]
        if selection == "unsteered" or gamma == 1.0:
            rows = {
                r["example_id"]: r[field] for r in self.rows if r["split"] == split and r["selection"] == "unsteered"
            }
            return np.array([[float(rows[i]) for i in ids] for _ in self.seeds_of[split]])
        out = []
        for seed in self.seeds_of[split]:
            rows = {
                r["example_id"]: r[field]
                for r in self.rows
                if r["split"] == split
                and r["selection"] == selection
                and r["intervention"] == intervention
                and r["gamma"] == gamma
                and r["seed"] == seed
            }
            out.append([float(rows[i]) for i in ids])
        return np.array(out)

    def verdict(self, split: str, spec: str, intervention: str, lo: float, hi: float) -> dict:
        """The rule's tests for one setting and gamma pair."""
        rnd = random_of(spec)
        m = lambda sel, g, f="length": self.matrix(split, sel, intervention, g, f)  # noqa: E731
        base = {f: m("unsteered", 1.0, f).mean() for f in ("looped", "answered")}
        shorter, longer = difference_interval(m(spec, lo), m(rnd, lo)), difference_interval(m(spec, hi), m(rnd, hi))
        vs_lo, vs_hi = (
            difference_interval(m(spec, lo), m("unsteered", 1.0)),
            difference_interval(m(spec, hi), m("unsteered", 1.0)),
        )
        ends = {"lo": lo, "hi": hi}
        loop_share = {end: m(spec, g, "looped").mean() for end, g in ends.items()}
        answered_share = {end: m(spec, g, "answered").mean() for end, g in ends.items()}
        checks = {  # each test of the rule, by name: the page shows them one by one
            "shorter_vs_unsteered": vs_lo.high < 0,
            "shorter_vs_random": shorter.high < 0,
            "longer_vs_unsteered": vs_hi.low > 0,
            "longer_vs_random": longer.low > 0,
            **{f"loops_{end}": abs(x - base["looped"]) <= BREAKAGE + 1e-9 for end, x in loop_share.items()},
            **{f"answers_{end}": x >= base["answered"] - BREAKAGE - 1e-9 for end, x in answered_share.items()},
        }
        moves = all(ok for name, ok in checks.items() if "_vs_" in name)
        keeps_text = all(ok for name, ok in checks.items() if "_vs_" not in name)
        return dict(
            selection=spec,
            intervention=intervention,
            lo=lo,
            hi=hi,
            shorter_vs_random=shorter.as_dict(),
            longer_vs_random=longer.as_dict(),
            shorter_vs_unsteered=vs_lo.as_dict(),
            longer_vs_unsteered=vs_hi.as_dict(),
            loop_share=loop_share,
            answered_share=answered_share,
            unsteered=base,
            checks=checks,
            moves=moves,
            keeps_text=keeps_text,
            passes=moves and keeps_text,
            margin=min(-shorter.high, longer.low),
        )

    def choose(self) -> tuple[dict, str, list[dict]]:
        sc = self.sc
        found = [
            self.verdict("dev", spec, i, lo, hi)
            for spec in sc.candidates
            for i in sc.interventions
            for lo in sc.gammas
            if lo < 1
            for hi in sc.gammas
            if hi > 1
        ]
        for tier, keep in (
            ("passes", lambda v: v["passes"]),
            ("keeps the text", lambda v: v["keeps_text"]),
            ("largest margin", lambda v: True),
        ):
            pool = [v for v in found if keep(v)]
            if pool:
                best = max(pool, key=lambda v: v["margin"])  # max keeps the first of equals: candidate order
                return best, tier, found
        raise AssertionError("unreachable: the last tier keeps every setting")

    # -- the whole study -----------------------------------------------------------------------------------

    def run(self) -> Path:
        sc, out = self.sc, Path(self.sc.out)
        out.mkdir(parents=True, exist_ok=True)
        wall = time.perf_counter()
        self.attribute()
        randoms = sorted({random_of(c) for c in sc.candidates})
        dev_settings = [(c, i) for c in sc.candidates for i in sc.interventions]
        dev_settings += [(r, i) for r in randoms for i in sc.interventions]
        self.evaluate("dev", dev_settings, sc.gammas)
        choice, tier, found = self.choose()
        self.log(
            f"study: chosen on dev ({tier}): {choice['selection']} {choice['intervention']} gammas {choice['lo']}/{choice['hi']}, "
            f"margin {choice['margin']:.1f} tokens"
        )
        test_settings = self.test_settings(choice)
        self.evaluate("test", test_settings, (choice["lo"], choice["hi"]))  # the chosen pair only
        self.timings["wall"] = time.perf_counter() - wall
        summary = self.summary(choice, tier, found, test_settings)
        sink = pa.BufferOutputStream()
        pq.write_table(pa.Table.from_pylist(self.rows), sink)
        atomic_write_bytes(out / "items.parquet", sink.getvalue().to_pybytes())
        atomic_write_json(out / "study.json", summary)
        atomic_write_text(out / "study.md", page(summary))
        self.log(f"study: written {out / 'study.md'} ({self.timings['wall'] / 60:.1f} min)")
        return out

    def test_settings(self, choice: dict) -> list[tuple[str, str]]:
        """The chosen setting and its random arm, and the shipped default and its own when it differs."""
        shipped = (self.sc.candidates[0], "scale")
        out = [(choice["selection"], choice["intervention"]), (random_of(choice["selection"]), choice["intervention"])]
        return out + ([shipped, (random_of(shipped[0]), "scale")] if shipped not in out else [])

    def summary(self, choice: dict, tier: str, found: list[dict], test_settings) -> dict:
        """Everything study.json holds and study.md shows: the rule, the choice, its test and every curve."""
        shipped = (self.sc.candidates[0], "scale")
        lo, hi = choice["lo"], choice["hi"]
        return dict(
            config=dataclasses.asdict(self.sc),
            rule=RULE,
            loop_rule={"tokens": LOOP_TOKENS, "repeats": LOOP_REPEATS},
            chosen=dict(choice, tier=tier),
            test=self.verdict("test", choice["selection"], choice["intervention"], lo, hi),
            shipped=dict(selection=shipped[0], intervention=shipped[1]),
            shipped_test=self.verdict("test", shipped[0], shipped[1], lo, hi),
            test_settings=test_settings,
            dev=found,
            selections=self.selection_rows(),
            curves={split: self.curves(split) for split in ("dev", "test")},
            timings=self.timings,
        )

    def selection_rows(self) -> list[dict]:
        rows = []
        for (seed, spec), (comps, scores) in sorted(self.selections.items(), key=lambda kv: (kv[0][0], kv[0][1])):
            st = self.stats[seed, comps[0].site]
            ratio = median_ratio(st["mean_abs"])
            rows.append(
                dict(
                    seed=seed,
                    selection=spec,
                    components=[str(c) for c in comps],
                    scores=scores,
                    heads=sorted({c.index // head_dim(self.exp.model) for c in comps})
                    if spec.endswith("heads")
                    else None,
                    median_ratio=[float(ratio[c.index]) for c in comps],
                    mean=[float(st["mean"][c.index]) for c in comps],
                    site_max_ratio=float(ratio.max()),
                )
            )
        return rows

    def curves(self, split: str) -> list[dict]:
        """Mean outcomes (with the length's interval) of every evaluated setting and gamma of the split."""
        settings = sorted(
            {
                (r["selection"], r["intervention"])
                for r in self.rows
                if r["split"] == split and r["selection"] != "unsteered"
            }
        )
        out = []
        for spec, i in [("unsteered", "none")] + settings:
            for g in [1.0] if spec == "unsteered" else self.gammas_of[split]:
                length = mean_interval(self.matrix(split, spec, i, g, "length"))
                out.append(
                    dict(
                        selection=spec,
                        intervention=i,
                        gamma=g,
                        length=length.as_dict(),
                        **{
                            f: float(self.matrix(split, spec, i, g, f).mean())
                            for f in ("cut_off", "looped", "answered", "correct")
                        },
                    )
                )
        return out


def random_of(spec: str) -> str:
    """The random arm matched to a candidate: the same site, and whole random heads for a heads selection."""
    site, by = candidate(spec)
    return f"{site}:random-heads" if by == "heads" else f"{site}:random"


def run_study(sc: StudyConfig, log=print) -> Path:
    return Study(sc, log).run()
