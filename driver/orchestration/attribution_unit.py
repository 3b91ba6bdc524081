"""One attribution unit on Ray: shard the prompts, chain generate -> attribute -> merge refs, reduce
exactly once, write the unit's record. The methods of ``RaySession`` that run a unit, kept apart from
the session's actors.

The driver never holds trajectories: each shard's rollouts go from a rollout actor to a gradient actor
as an ObjectRef, and the partial table from there to the reducer. In-flight shards are bounded with
``ray.wait``. Scores equal in-process ``ipg.attribute`` for any number of workers (the mean baseline
takes a first pass that adds activation sums over all shards, then the same second pass).

Durability: the reducer snapshots (sums + ledger of merged shards) every K shards. The driver keeps
each shard's partial-table ref until the end and re-sends any shard missing from the ledger, so a
reducer restarted from an older snapshot loses nothing and double counts nothing. ``resume=True``
continues a killed run in the same directory, skipping the shards in the ledger.

Files in ``out_dir``: scores.parquet (final), attribution.json (run key, diagnostics; written last:
its presence means the unit is complete), reducer-snapshot.parquet (while running), baseline.safetensors
(mean baseline, so a resumed run uses the same one).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow.parquet as pq
import ray
import torch
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from ipg.attribution import Attribution, AttributionConfig, prepare_examples, score_meta
from ipg.cluster.errors import FatalError, cause, error_class
from ipg.cluster.metrics import RUN_ENV, StageTimer, metrics
from ipg.cluster.ray_cluster import ActorGroup, ActorSpec
from ipg.completeness import points_to_sample
from ipg.component_path import component_candidates
from ipg.components import Site
from ipg.driver.orchestration.dispatch import Dispatch, shard
from ipg.driver.orchestration.progress import Progress
from ipg.driver.orchestration.ray_errors import get, lost_what, lost_work, worker_error
from ipg.driver.orchestration.samplers import RankGroups, RolloutActors
from ipg.driver.orchestration.unit_records import BASELINE, RESULT_RECORD, finished_record, run_key
from ipg.driver.orchestration.unit_records import diagnostics as unit_diagnostics
from ipg.driver.ray_config import RayConfig
from ipg.errors import InputError
from ipg.files import atomic_write_json
from ipg.signals import make_signal, signal_source
from ipg.workers.faults import maybe_crash
from ipg.workers.gradient import merge_rank_tables
from ipg.workers.reducer import PREVIOUS, SNAPSHOT, Reducer, read_snapshot

_merge_ranks = ray.remote(num_cpus=0)(merge_rank_tables)


class AttributionUnits:
    """Mixed into ``RaySession``: ``attribute`` runs one unit on the session's actors. The session's
    ``__init__`` sets the attributes declared here."""

    cfg: RayConfig  # the ray section, rollout_backend resolved (never 'auto')
    sampler: RolloutActors | RankGroups  # who samples
    groups: list[list]  # the gradient groups: one actor each, or a ZeRO-3 group's ranks
    shipped: list[str]  # users' signal modules sent to every actor
    run: str  # the run's name (metrics tag)
    timer: StageTimer
    log: Callable[[str], None]

    def _group(self, k: int) -> list:
        """The gradient actors of shard k: one actor, or every rank of a ZeRO-3 group (each rank gets the same
        call: the group runs in lockstep)."""
        return self.groups[k % len(self.groups)]

    def on_weights(self, call, what: str):
        """``call(actor)`` (an actor method's ``.remote``) on the first gradient group, which holds the weights
        (every rank of a ZeRO-3 group runs it, in lockstep); the first rank's answer."""
        return get([call(a) for a in self._group(0)], what)[0]

    def attribute(
        self,
        examples: list[dict],
        cfg: AttributionConfig,
        *,
        signal: str = "accuracy",
        signal_params: dict | None = None,
        out_dir: str | Path,
        run_id: str = "",
        resume: bool = False,
        pg_table=None,
    ) -> Attribution:
        """One attribution unit, resumable under ``out_dir``. Method 'component' is two: PG over all the
        prompts (under ``out_dir``/pg, unless ``pg_table`` gives its scores), then its top candidates
        re-scored on the per-component path, shard by shard, in the gradient actors."""
        out_dir, signal_params = Path(out_dir), dict(signal_params or {})
        examples = prepare_examples(examples)
        sig = make_signal(signal, **signal_params)
        sig.check(examples)
        source = signal_source(signal)
        if source is not None and str(source) not in self.shipped:
            raise InputError(
                f"signal: '{signal}' comes from {source}, which no installed package provides and this Ray "
                "session's actors were not given; name it when the session starts (RaySession(..., "
                "signals=[...])), or install it on the cluster"
            )
        sites = [Site(layer, cfg.kind) for layer in cfg.layers]
        # validates layers/kind against the model where it lives (the driver loads no weights)
        info = self.on_weights(lambda actor: actor.describe.remote(sites), "gradient worker")
        candidates = None
        if cfg.path.per_component:
            if self.cfg.gradient_backend == "deepspeed":
                raise InputError(
                    "attribution.method: 'component' is not available with ray.gradient_backend 'deepspeed' "
                    "yet; use the torch backend, or method 'pg'"
                )
            if pg_table is None:
                pg_table = self.attribute(
                    examples,
                    dataclasses.replace(cfg, method=cfg.path.candidates_from),
                    signal=signal,
                    signal_params=signal_params,
                    out_dir=out_dir / "pg",
                    run_id=f"{run_id}-pg",
                    resume=resume,
                ).table
            candidates = component_candidates(pg_table, sites, cfg.candidates)
        shards = shard(examples, self.cfg.shard_size)
        key = run_key(info["model"], sig.name, signal_params, cfg, shards, candidates)
        done = finished_record(out_dir, key)
        if done is not None and resume:
            self.log(f"  {out_dir}: complete (run key {key}), loaded")
            return Attribution(pq.read_table(out_dir / "scores.parquet"), done["diagnostics"], cfg)
        found = read_snapshot(out_dir)
        if found is not None and not resume:
            raise InputError(
                f"{out_dir}: holds an unfinished run ({SNAPSHOT}); continue it with --resume {out_dir}, "
                "or choose another output directory"
            )
        if found is not None and found[3]:
            self.log(f"  {found[3]}")
        if found is not None and found[2] != key:
            raise InputError(
                f"{out_dir}: --resume with different settings than the run there (run key {found[2]}, "
                f"now {key}); resume with the same config, or use another output directory"
            )
        start = time.perf_counter()
        meta = score_meta(info["model"], sig.name, cfg, run_id)
        # on the driver's node: the results are written where the driver (and its user) can read them,
        # whatever the cluster's filesystems
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        reducer = ActorGroup(
            Reducer,
            1,
            ActorSpec(
                num_cpus=0,
                max_restarts=4,
                max_task_retries=4,
                env={RUN_ENV: self.run},
                extra={"scheduling_strategy": here},
            ),
            str(out_dir),
            meta,
            snapshot_every=self.cfg.snapshot_every,
            run_key=key,
        ).pick(0)
        try:
            return self._run(reducer, shards, cfg, signal, signal_params, sites, info, key, out_dir, start, candidates)
        finally:
            ray.kill(reducer, no_restart=True)

    def _run(
        self, reducer, shards, cfg, signal, params, sites, info, key, out_dir, start, candidates=None
    ) -> Attribution:
        merged = set(ray.get(reducer.merged_shards.remote()))
        restore = ray.get(reducer.status.remote())["restore_seconds"]
        if merged:
            self.log(
                f"  resuming {out_dir}: {len(merged)}/{len(shards)} shards already merged "
                f"(snapshot restored in {restore:.3f} s)"
            )
        rollout_refs, costs = {}, {}
        baselines = None
        if cfg.baseline == "mean":
            baselines, rollout_refs, costs = self._mean_baseline(shards, cfg, signal, params, sites, out_dir)
        todo = [(k, sid, part) for k, (sid, part) in enumerate(shards) if sid not in merged]
        baselines_ref = ray.put(baselines) if baselines is not None else None
        in_flight = {}  # merge call -> shard
        parts = {sid: (k, part) for k, sid, part in todo}
        plan = Dispatch([sid for _, sid, _ in todo], len(self.groups), self.cfg.max_in_flight, set(rollout_refs))
        progress = Progress(len(todo), f"attribute {out_dir.name}", self.cfg.progress, self.log)
        attempts = {sid: 1 for _, sid, _ in todo}

        def generate(sid):
            k, part = parts[sid]
            rollout_refs[sid], cost = self.sampler.generate_costed(k, sid, part, cfg, signal, params)
            return cost

        def attribute(sid, g):
            rollouts = rollout_refs.pop(sid)
            ranks = [
                a.attribute.remote(sid, rollouts, cfg, signal, baselines_ref, params, candidates)
                for a in self._group(g)
            ]
            return ranks[0] if len(ranks) == 1 else _merge_ranks.remote(*ranks)

        try:
            with self.timer("attribute"):
                table_refs = run_shards(
                    plan,
                    generate,
                    attribute,
                    reducer,
                    self.cfg.max_in_flight + len(self.groups),
                    in_flight,
                    lambda ref: self._wait_one(in_flight, progress, ref, plan, attempts, out_dir),
                    costs,
                )
                # a reducer restarted from an older snapshot forgot the shards merged after it: re-send them
                for _ in range(3):
                    ledger = set(ray.get(reducer.merged_shards.remote()))  # one call, not one per shard
                    missing = [sid for sid, _ in shards if sid not in ledger]
                    if not missing:
                        break
                    self.log(f"  reducer restarted: re-sending {len(missing)} shard(s) merged after its last snapshot")
                    ray.get([reducer.merge.remote(sid, table_refs[sid]) for sid in missing])
                else:
                    raise FatalError(f"reducer: shards {missing} still missing after re-sending them")
        except BaseException:
            # let the shards already under way land (cancelling queued actor calls stalls the reducer's
            # call sequence), then make every merged shard durable for --resume; never write scores.parquet
            try:
                ray.wait(list(in_flight), num_returns=len(in_flight), timeout=120)
                ray.get(reducer.snapshot.remote(), timeout=60)
            except Exception:
                pass
            raise
        finally:
            progress.close()
        ledger = ray.get(reducer.ledger_stats.remote())
        skipped = {ex: err for s in ledger.values() for ex, err in s.get("skipped", {}).items()}
        n_prompts = sum(s.get("prompts", 0) for s in ledger.values())
        if n_prompts == 0:
            raise InputError(
                f"examples: the signal failed on every example (on_error 'skip'); first: {next(iter(skipped.values()), '')}"
            )
        if baselines is None:
            baselines = {s: torch.zeros(info["widths"][str(s)]) for s in sites}
        completeness = self._completeness(shards, ledger, cfg, signal, params, sites, baselines)
        restore = ray.get(reducer.status.remote())["restore_seconds"] or restore  # a restart mid-run restored too
        table_ref = reducer.finalize.remote()
        table = ray.get(table_ref)
        seconds = time.perf_counter() - start
        diagnostics = unit_diagnostics(ledger, table, sites, cfg, completeness, seconds, restore)
        atomic_write_json(
            out_dir / RESULT_RECORD,
            {
                "run_key": key,
                "model": info["model"],
                "signal": getattr(signal, "__name__", signal),
                "signal_params": params,
                "config": dataclasses.asdict(cfg),
                "shards": [sid for sid, _ in shards],
                "workers": {
                    "rollout": len(self.sampler),
                    "rollout_backend": self.cfg.rollout_backend,
                    "gradient": len(self.groups),
                    "ranks_per_gradient_worker": len(self.groups[0]),
                },
                "nodes": {"driver": ray.get_runtime_context().get_node_id(), "reducer": ray.get(reducer.node.remote())},
                "diagnostics": diagnostics,
            },
        )
        for name in (SNAPSHOT, PREVIOUS):  # complete: attribution.json + scores.parquet are the record
            (out_dir / name).unlink(missing_ok=True)
        return Attribution(table, diagnostics, cfg, table_ref=table_ref)

    def _wait_one(
        self, in_flight: dict, progress: Progress, ref, plan: Dispatch, attempts: dict, out_dir
    ) -> str | None:
        """A finished merge call: its shard id. Work lost with an actor, worker or node is handed out again
        whole (None), after a backoff that gives Ray time to restart actors elsewhere, up to
        ray.max_shard_attempts; any other error, or the limit spent, ends the run with the cause."""
        sid = in_flight.pop(ref)
        try:
            ray.get(ref)
            maybe_crash("driver", sid)  # tests: the driver dies with this shard merged
        except ray.exceptions.RayError as e:
            if lost_work(e) and attempts[sid] < self.cfg.max_shard_attempts:
                wait = min(30.0, 2.0 ** attempts[sid])
                attempts[sid] += 1
                self.log(
                    f"  shard '{sid}': work lost ({lost_what(e)}); again in {wait:.0f} s, attempt {attempts[sid]} of "
                    f"{self.cfg.max_shard_attempts}"
                )
                self._drop_lost_groups(plan)
                plan.retry(sid, delay=wait)
                return None
            m = metrics()
            if m is not None and error_class(cause(e)) == "fatal":
                m.error("fatal", "driver")
            if lost_work(e):
                raise FatalError(
                    f"shard '{sid}': its work was lost {attempts[sid]} times, the limit of "
                    f"ray.max_shard_attempts (last: {lost_what(e)}); continue with --resume {out_dir}, "
                    "which keeps the merged shards"
                ) from None
            err = worker_error(e, f"shard '{sid}'")
            raise err from err.original
        progress.advance()
        return sid

    def _drop_lost_groups(self, plan: Dispatch) -> None:
        """A ZeRO-3 group that lost a rank cannot be rebuilt mid-run: no more work for it, and with none
        left, the run ends saying so."""
        if self.cfg.gradient_backend != "deepspeed":
            return  # torch gradient actors restart on their own
        for g, ranks in enumerate(self.groups):
            try:
                ray.get([r.ready.remote() for r in ranks], timeout=30)
            except (ray.exceptions.RayError, TimeoutError):
                plan.lose_group(g)
        if plan.live_groups() == 0:
            raise FatalError(
                "every ZeRO-3 gradient group lost a rank; a group cannot be rebuilt mid-run: continue with "
                "--resume, which starts new groups and keeps the merged shards"
            )

    def _mean_baseline(self, shards, cfg, signal, params, sites, out_dir):
        """First pass: every shard's rollouts and activation sums, added into the global mean. Saved, so
        a resumed run uses the same baseline; the rollout refs (and their costs) are kept for the second pass."""
        from safetensors.torch import load_file, save_file

        path = out_dir / BASELINE
        if path.is_file():
            saved = load_file(path)
            return {s: saved[str(s)] for s in sites}, {}, {}
        rollout_refs, cost_refs, sums_refs = {}, {}, []
        with self.timer("mean_baseline"):
            for k, (sid, part) in enumerate(shards):
                rollout_refs[sid], cost_refs[sid] = self.sampler.generate_costed(k, sid, part, cfg, signal, params)
                sums_refs += [a.activation_sums.remote(sid, rollout_refs[sid], cfg) for a in self._group(k)]
            sums = get(sums_refs, "mean baseline")
            costs = dict(zip(cost_refs, get(list(cost_refs.values()), "mean baseline")))
        baselines = {}
        for s in sites:
            total = np.sum([part[str(s)][0] for part in sums], axis=0)
            count = sum(part[str(s)][1] for part in sums)
            baselines[s] = torch.from_numpy(total / max(count, 1)).float()
        out_dir.mkdir(parents=True, exist_ok=True)
        tmp = out_dir / f".{BASELINE}.tmp"
        save_file({str(s): v.contiguous() for s, v in baselines.items()}, str(tmp))
        tmp.replace(path)
        return baselines, rollout_refs, costs

    def _completeness(self, shards, ledger, cfg, signal, params, sites, baselines) -> dict:
        """J(0) and J(alpha_min) per site as rollout tasks over the scored prompts (and J along the path
        from the ledger in resample mode), the same numbers as in-process ``attribute``."""
        out = {str(s): {} for s in sites}
        n = sum(st["prompts"] for st in ledger.values())
        if cfg.resamples:
            for s in sites:
                path = [st["J_path"][str(s)] for st in ledger.values() if st.get("prompts")]
                out[str(s)]["J_path"] = [[path[0][i][0], sum(p[i][1] for p in path) / n] for i in range(len(path[0]))]
        ids = {sid: set(ledger[sid]["example_ids"]) for sid, _ in shards}
        scored = [(sid, [ex for ex in part if ex["id"] in ids[sid]]) for sid, part in shards]
        scored = [(sid, part) for sid, part in scored if part]
        with self.timer("completeness"):
            for s in sites:
                for name, alpha in points_to_sample(cfg, out[str(s)].get("J_path")):
                    refs = [
                        self.sampler.mean_reward(k, sid, part, cfg, signal, params, s, alpha, baselines[s])
                        for k, (sid, part) in enumerate(scored)
                    ]
                    parts = get(refs, "completeness")
                    out[str(s)][name] = sum(p[0] for p in parts) / sum(p[1] for p in parts)
        return out


def run_shards(
    plan: Dispatch, generate, attribute, reducer, max_merges: int, in_flight: dict, merged, costs: dict | None = None
) -> dict:
    """Carry out ``plan``: ``generate(sid)`` starts a shard's rollouts and returns the ref of its cost,
    ``attribute(sid, group)`` starts its gradient pass and returns its partial table's
    ref, which the reducer merges; ``merged(ref)`` takes each finished merge call (``in_flight``: merge
    call -> shard, the caller's, so it can wait for what is under way when something fails). No more
    shards are handed out while ``max_merges`` merges are pending. ``costs``: known costs of shards
    generated before. Returns shard -> partial table ref."""
    tables, costs, pending = {}, dict(costs or {}), {}  # pending: cost ref -> shard
    while not plan.finished() or in_flight:
        for sid in plan.to_generate():
            pending[generate(sid)] = sid
        if pending:  # rollouts finished since: their costs (a failed one surfaces from its gradient call)
            done, _ = ray.wait(list(pending), num_returns=len(pending), timeout=0)
            for ref in done:
                sid = pending.pop(ref)
                try:
                    costs[sid] = ray.get(ref)
                except ray.exceptions.RayError:
                    costs[sid] = 0
        if len(in_flight) < max_merges:
            for sid, g in plan.to_attribute(costs):
                tables[sid] = attribute(sid, g)
                in_flight[reducer.merge.remote(sid, tables[sid])] = sid
        attributing = {tables[sid]: sid for sid in plan.attributing}
        refs = list(attributing) + list(in_flight)
        if not refs:  # nothing under way: a shard handed out again waits out its backoff
            time.sleep(0.2)
            continue
        done, _ = ray.wait(refs, num_returns=1, timeout=0.5 if plan.backing_off() else None)
        if not done:
            continue
        if done[0] in attributing:
            plan.attributed(attributing[done[0]])  # a failure surfaces from its merge
        else:
            merged(done[0])
    return tables
