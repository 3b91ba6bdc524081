"""Attribution on Ray: shard prompts, chain generate -> attribute -> merge refs, reduce exactly once.

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
import hashlib
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import ray
import torch

from cluster.errors import FatalError, ItemError, cause, error_class
from cluster.metrics import StageTimer, metrics
from cluster.ray_cluster import ActorGroup, ActorSpec, connect, reserve, upload_modules
from driver.config import ModelConfig, RayConfig, sae_path
from ipg.attribution import AttributionConfig, prepare_examples, score_meta
from ipg.component_path import component_candidates
from ipg.components import Site
from ipg.errors import InputError
from ipg.files import atomic_write_json
from ipg.models import load_tokenizer, resolve_model_path
from ipg.prompts import longest_prompt
from ipg.signals import make_signal, signal_source
from workers.faults import maybe_crash
from workers.gradient import GradientWorker, merge_rank_tables
from workers.reducer import SNAPSHOT, Reducer, read_snapshot
from workers.rollout import RolloutWorker

DONE = "attribution.json"
_merge_ranks = ray.remote(num_cpus=0)(merge_rank_tables)
BASELINE = "baseline.safetensors"


def shard(examples: list[dict], shard_size: int) -> list[tuple[str, list[dict]]]:
    """Deterministic shards in input order; the id names the shard number and first and last example."""
    if shard_size < 1:
        raise InputError(f"ray.shard_size: must be >= 1, got {shard_size}")
    out = []
    for i in range(0, len(examples), shard_size):
        part = examples[i : i + shard_size]
        out.append((f"shard-{i // shard_size:05d}-{part[0]['id']}..{part[-1]['id']}", part))
    return out


@dataclass
class RayAttribution:
    """Result of a Ray attribution: the same table as in-process ``ipg.attribute`` (``table_ref`` is it
    in the object store), diagnostics from the reducer's ledger."""

    table: object
    diagnostics: dict
    config: AttributionConfig
    table_ref: object = None
    rollouts: list = field(default_factory=list)  # trajectories stay in the cluster; empty here

    def to_pandas(self):
        return self.table.to_pandas()


class Progress:
    """A bar on a terminal, plain lines (every ~10% or 30 s) in a job log, or nothing."""

    def __init__(self, total: int, what: str, mode: str = "auto", log=print):
        self.total, self.what, self.done, self.start, self.last = total, what, 0, time.perf_counter(), 0.0
        self.mode = ("bar" if sys.stderr.isatty() else "lines") if mode == "auto" else mode
        self.log, self.bar = log, None
        if self.mode == "bar" and total:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=what, unit="shard", file=sys.stderr, leave=False)

    def advance(self, n: int = 1, prompts: int = 0) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            return
        elapsed = time.perf_counter() - self.start
        step = max(1, self.total // 10)
        if self.mode == "lines" and (self.done % step == 0 or self.done == self.total or elapsed - self.last > 30):
            self.last = elapsed
            eta = elapsed / self.done * (self.total - self.done)
            self.log(f"  {self.what}: {self.done}/{self.total} shards ({100 * self.done / self.total:.0f}%), "
                     f"{elapsed:.1f} s, ~{eta:.0f} s left")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _unwrap(exc: BaseException, what: str, starting: bool = False) -> BaseException:
    """A worker's error as the driver reports it: per-item and input errors as InputError (one line,
    naming shard and example), anything else as FatalError with its class. ``starting``: the actors'
    start-up (model loading), where a dead actor means its constructor failed, not a spent restart budget."""
    inner = cause(exc)
    if isinstance(inner, (ItemError, InputError)):
        return InputError(str(inner))
    text = str(exc).strip()
    last = text.splitlines()[-1] if text else type(exc).__name__
    if last.startswith("ipg.errors.InputError: "):  # only Ray's rendering of the worker's error came back
        return InputError(last.split(": ", 1)[1])
    if starting:
        return FatalError(f"{what}: {last}")
    if isinstance(exc, ray.exceptions.RayActorError):
        return FatalError(f"{what}: an actor died more often than its restart budget allows ({exc})")
    return FatalError(f"{what}: {type(inner).__name__}: {inner}")


def _get(refs, what: str):
    """``ray.get``, with a worker's error re-raised as this project's error naming ``what``."""
    try:
        return ray.get(refs)
    except ray.exceptions.RayError as e:
        raise _unwrap(e, what) from None


def run_key(model: str, signal: str, signal_params: dict, cfg: AttributionConfig, shards, run_id: str,
            candidates: dict | None = None) -> str:
    # the model inputs too: the same ids under another prompt format are another run
    inputs = hashlib.sha256(json.dumps([ex.get("prompt_ids") for _, part in shards for ex in part]).encode()).hexdigest()
    plan = {"model": model, "signal": signal, "signal_params": signal_params, "config": dataclasses.asdict(cfg),
            "run_id": run_id, "shards": [[sid, [ex["id"] for ex in part]] for sid, part in shards], "inputs": inputs}
    if candidates is not None:  # method 'component': the components it re-scores
        plan["candidates"] = {str(site): list(idx) for site, idx in sorted(candidates.items())}
    return hashlib.sha256(json.dumps(plan, sort_keys=True, default=str).encode()).hexdigest()[:16]


class RaySession:
    """Rollout and gradient actor groups for one model, reused across attributions (``ipg run`` attributes
    many times with the same model). Close it to release the actors and the placement group."""

    def __init__(self, model: ModelConfig | str = "organism", ray_cfg: RayConfig | None = None, log=print,
                 signals: list[str] = (), max_tokens: int | None = None):
        """``signals``: the signals this session will attribute; a user's signal module that no installed
        package provides is shipped to every actor. ``max_tokens``: the longest sequence (prompt and new
        tokens) it will generate; vLLM engines hold that context when ray.vllm.max_model_len is unset."""
        self.model = ModelConfig(name=model, saes={}) if isinstance(model, str) else model
        self.cfg = ray_cfg or RayConfig()
        path = resolve_model_path(self.model.name)  # a missing local path fails here, before any actor starts
        self.log = log
        self.vllm = self._vllm_options(path, max_tokens)
        self.shipped = sorted({str(p) for p in map(signal_source, signals) if p is not None})
        self.info = connect(self.cfg.address)
        c = self.cfg
        spec = ActorSpec(num_cpus=c.cpus_per_actor, num_gpus=c.gpus_per_actor, threads=c.threads_per_actor,
                         py_modules=upload_modules(self.shipped))
        ranks = c.deepspeed.ranks if c.gradient_backend == "deepspeed" else 1
        # a ZeRO-3 rank cannot rejoin its group after a crash: no restarts (the run fails; --resume continues it)
        rollout_spec = dataclasses.replace(spec, resources=dict(c.rollout_resources))
        spec = dataclasses.replace(spec, resources=dict(c.gradient_resources))
        rank_spec = dataclasses.replace(spec, max_restarts=0, max_task_retries=0) if ranks > 1 or c.gradient_backend == "deepspeed" else spec
        groups = {"rollout": (c.rollout_workers, rollout_spec), "gradient": (c.gradient_workers * ranks, rank_spec)}
        self.placement_group, first = reserve(groups, c.placement_strategy)
        m = self.model
        saes = {layer: sae_path(path, m.name, layer) for layer, path in m.saes.items()}
        common = dict(dtype=m.dtype, device=m.device, trust_remote_code=m.trust_remote_code, saes=saes,
                      threads=c.threads_per_actor)
        self.rollout = ActorGroup(RolloutWorker, c.rollout_workers, rollout_spec, m.name, backend=c.rollout_backend, vllm=self.vllm,
                                  placement_group=self.placement_group, first_bundle=first["rollout"], **common)
        if c.gradient_backend == "deepspeed":
            from workers.deepspeed_backend import DeepSpeedGradientRank

            self.gradient = ActorGroup(DeepSpeedGradientRank, c.gradient_workers * ranks, rank_spec, m.name,
                                       offload_params=c.deepspeed.offload_params, timeout_s=c.deepspeed.timeout_s,
                                       placement_group=self.placement_group,
                                       first_bundle=first["gradient"],
                                       per_actor=[{"rank": i % ranks, "world": ranks} for i in range(c.gradient_workers * ranks)],
                                       **common)
        else:
            self.gradient = ActorGroup(GradientWorker, c.gradient_workers, spec, m.name, backend=c.gradient_backend,
                                       placement_group=self.placement_group, first_bundle=first["gradient"], **common)
        self.groups = [self.gradient.actors[g * ranks : (g + 1) * ranks] for g in range(c.gradient_workers)]
        self.timer = StageTimer()
        self._ready()
        if c.rollout_backend == "vllm":  # how each engine was sized, in the log and in run.json
            self.info["vllm"] = ray.get([a.engine_memory.remote() for a in self.rollout.actors])
            for i, line in enumerate(self.info["vllm"]):
                self.log(f"rollout actor {i}: {line}")
        if c.gradient_backend == "deepspeed":
            self.info["zero3"] = self._join_groups()

    def _vllm_options(self, path: str, max_tokens: int | None) -> dict | None:
        """The rollout engines' options: the context sized from the run when unset, and the settings no
        engine could start with refused here, once, before any actor starts."""
        c, m = self.cfg, self.model
        if c.rollout_backend != "vllm":
            return None
        from workers.vllm_sizing import preflight, whole_blocks

        vllm = dataclasses.asdict(c.vllm)
        if vllm["max_model_len"] is None and max_tokens:
            vllm["max_model_len"] = whole_blocks(max_tokens)
        preflight(path, vllm, gpu=c.gpus_per_actor > 0, dtype=m.dtype, trust_remote_code=m.trust_remote_code)
        return vllm

    def _join_groups(self) -> list[dict]:
        """Form each ZeRO-3 group (all ranks join at once) and load the partitioned model; returns the
        parameters each rank holds."""
        memory = []
        try:
            for group in self.groups:
                addr, port = ray.get(group[0].address.remote())
                memory += ray.get([r.join.remote(addr, port) for r in group], timeout=self.cfg.deepspeed.timeout_s)
        except ray.exceptions.GetTimeoutError:
            self.close()
            raise FatalError(f"deepspeed group: the ranks did not form a group within ray.deepspeed.timeout_s="
                             f"{self.cfg.deepspeed.timeout_s:g} s (a rank stuck loading or unable to reach "
                             f"{addr}:{port}); check the rank actors' logs, or raise ray.deepspeed.timeout_s") from None
        except ray.exceptions.RayError as e:
            self.close()
            raise _unwrap(e, "deepspeed group") from None
        for m in memory:
            self.log(f"  zero3 rank {m['rank']}: {m['local_params']:,} of {m['full_params']:,} parameters "
                     f"({m['local_bytes'] / 2**20:.1f} of {m['full_bytes'] / 2**20:.1f} MiB)")
        return memory

    def _gradient(self, k: int, method: str, *args) -> list:
        """Call a gradient method for shard k on its group: one actor, or every rank of a ZeRO-3 group."""
        return [getattr(a, method).remote(*args) for a in self.groups[k % len(self.groups)]]

    def _ready(self) -> None:
        """Wait until every actor has loaded the model, so a broken model or environment fails here,
        once, with the worker's own message (and timings of the attributions exclude start-up)."""
        try:
            ray.get([a.ready.remote() for a in self.rollout.actors + self.gradient.actors])
        except ray.exceptions.RayError as e:
            self.close()
            raise _unwrap(e, "workers failed to start", starting=True) from None

    def close(self) -> None:
        from ray.util.placement_group import remove_placement_group

        self.rollout.kill()
        self.gradient.kill()
        remove_placement_group(self.placement_group)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def steered_generate(self, examples: list[dict], params, steering: dict | None = None) -> list:
        """Generation under steering in the rollout actors (their engines), prompts split across them;
        the samples come back in input order."""
        n = len(self.rollout)
        parts = [examples[i::n] for i in range(n)]
        refs = [self.rollout.pick(i).steered_generate.remote(part, params, steering) for i, part in enumerate(parts) if part]
        by_id = {g[0].example_id: g for res in _get(refs, "steered generation") for g in res}
        return [by_id[ex["id"]] for ex in examples]

    def rollouts(self, examples: list[dict], cfg: AttributionConfig, signal: str, signal_params: dict) -> list:
        """An attribution's support rollouts, drawn again in the rollout actors shard by shard (sampling is
        seeded per example and sample: the trajectories the attribution scored), in input order."""
        refs = [self.rollout.pick(k).generate.remote(sid, part, cfg, signal, signal_params)
                for k, (sid, part) in enumerate(shard(prepare_examples(examples), self.cfg.shard_size))]
        return [r for part in _get(refs, "support rollouts") for r in part.rollouts]

    def model_op(self, name: str, *args):
        """One of ``workers.model_ops.ModelOps``' computations in a gradient actor, which holds the
        weights (every rank of a ZeRO-3 group runs it, in lockstep; the first rank's answer is returned)."""
        return _get(self._gradient(0, "model_op", name, *args), name)[0]

    # -- one attribution ---------------------------------------------------------------------------

    def attribute(self, examples: list[dict], cfg: AttributionConfig, *, signal: str = "accuracy",
                  signal_params: dict | None = None, out_dir: str | Path, run_id: str = "",
                  resume: bool = False, pg_table=None) -> RayAttribution:
        """One attribution unit, resumable under ``out_dir``. Method 'component' is two: PG over all the
        prompts (under ``out_dir``/pg, unless ``pg_table`` gives its scores), then its top candidates
        re-scored on the per-component path, shard by shard, in the gradient actors."""
        out_dir, signal_params = Path(out_dir), dict(signal_params or {})
        examples = prepare_examples(examples)
        sig = make_signal(signal, **signal_params)
        sig.check(examples)
        source = signal_source(signal)
        if source is not None and str(source) not in self.shipped:
            raise InputError(f"signal: '{signal}' comes from {source}, which no installed package provides and this Ray "
                             "session's actors were not given; name it when the session starts (RaySession(..., "
                             "signals=[...])), or install it on the cluster")
        sites = [Site(layer, cfg.kind) for layer in cfg.layers]
        # validates layers/kind against the model where it lives (the driver loads no weights)
        info = _get(self._gradient(0, "describe", sites)[0], "gradient worker")
        candidates = None
        if cfg.method == "component":
            if self.cfg.gradient_backend == "deepspeed":
                raise InputError("attribution.method: 'component' is not available with ray.gradient_backend 'deepspeed' "
                                 "yet; use the torch backend, or method 'pg'")
            if pg_table is None:
                pg_table = self.attribute(examples, dataclasses.replace(cfg, method="pg"), signal=signal,
                                          signal_params=signal_params, out_dir=out_dir / "pg", run_id=f"{run_id}-pg",
                                          resume=resume).table
            candidates = component_candidates(pg_table, sites, cfg.candidates)
        shards = shard(examples, self.cfg.shard_size)
        key = run_key(info["model"], sig.name, signal_params, cfg, shards, run_id, candidates)
        done = _finished(out_dir, key)
        if done is not None and resume:
            self.log(f"  {out_dir}: complete (run key {key}), loaded")
            return RayAttribution(pq.read_table(out_dir / "scores.parquet"), done["diagnostics"], cfg)
        found = read_snapshot(out_dir)
        if found is not None and not resume:
            raise InputError(f"{out_dir}: holds an unfinished run ({SNAPSHOT}); continue it with --resume {out_dir}, "
                             "or choose another output directory")
        if found is not None and found[2] != key:
            raise InputError(f"{out_dir}: --resume with different settings than the run there (run key {found[2]}, "
                             f"now {key}); resume with the same config, or use another output directory")
        start = time.perf_counter()
        meta = score_meta(info["model"], sig.name, cfg, run_id)
        reducer = ActorGroup(Reducer, 1, ActorSpec(num_cpus=0, max_restarts=4, max_task_retries=4), str(out_dir), meta,
                             snapshot_every=self.cfg.snapshot_every, run_key=key).pick(0)
        try:
            return self._run(reducer, shards, cfg, signal, signal_params, sites, info, key, out_dir, start, candidates)
        finally:
            ray.kill(reducer, no_restart=True)

    def _run(self, reducer, shards, cfg, signal, params, sites, info, key, out_dir, start, candidates=None) -> RayAttribution:
        merged = set(ray.get(reducer.merged_shards.remote()))
        restore = ray.get(reducer.status.remote())["restore_seconds"]
        if merged:
            self.log(f"  resuming {out_dir}: {len(merged)}/{len(shards)} shards already merged "
                     f"(snapshot restored in {restore:.3f} s)")
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

        def generate(sid):
            k, part = parts[sid]
            rollout_refs[sid], cost = self.rollout.pick(k).generate_costed.options(num_returns=2).remote(sid, part, cfg, signal, params)
            return cost

        def attribute(sid, g):
            ranks = self._gradient(g, "attribute", sid, rollout_refs.pop(sid), cfg, signal, baselines_ref, params, candidates)
            return ranks[0] if len(ranks) == 1 else _merge_ranks.remote(*ranks)

        try:
            with self.timer("attribute"):
                table_refs = run_shards(plan, generate, attribute, reducer, self.cfg.max_in_flight + len(self.groups), in_flight,
                                        lambda ref: self._wait_one(in_flight, progress, ref), costs)
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
            raise InputError(f"examples: the signal failed on every example (on_error 'skip'); first: {next(iter(skipped.values()), '')}")
        if baselines is None:
            baselines = {s: torch.zeros(info["widths"][str(s)]) for s in sites}
        completeness = self._completeness(shards, ledger, cfg, signal, params, sites, baselines)
        restore = ray.get(reducer.status.remote())["restore_seconds"] or restore  # a restart mid-run restored too
        table_ref = reducer.finalize.remote()
        table = ray.get(table_ref)
        seconds = time.perf_counter() - start
        diagnostics = _diagnostics(ledger, table, sites, cfg, completeness, seconds, restore)
        atomic_write_json(out_dir / DONE, {"run_key": key, "model": info["model"], "signal": getattr(signal, "__name__", signal), "signal_params": params,
                                           "config": dataclasses.asdict(cfg), "shards": [sid for sid, _ in shards],
                                           "workers": {"rollout": len(self.rollout), "gradient": len(self.groups),
                                                                       "ranks_per_gradient_worker": len(self.groups[0])},
                                           "diagnostics": diagnostics})
        (out_dir / SNAPSHOT).unlink(missing_ok=True)  # complete: attribution.json + scores.parquet are the record
        return RayAttribution(table, diagnostics, cfg, table_ref)

    def _wait_one(self, in_flight: dict, progress: Progress, ref) -> str:
        """A finished merge call: its shard id (or the worker's error)."""
        sid = in_flight.pop(ref)
        try:
            ray.get(ref)
            maybe_crash("driver", sid)  # tests: the driver dies with this shard merged
        except ray.exceptions.RayError as e:
            m = metrics()
            if m is not None and error_class(cause(e)) == "fatal":
                m.error("fatal", "driver")
            raise _unwrap(e, f"shard '{sid}'") from None
        progress.advance()
        return sid

    def _mean_baseline(self, shards, cfg, signal, params, sites, out_dir):
        """First pass: every shard's rollouts and activation sums, added into the global mean. Saved, so
        a resumed run uses the same baseline; the rollout refs (and their costs) are kept for the second pass."""
        from safetensors.torch import load_file, save_file

        path = out_dir / BASELINE
        if path.is_file():
            saved = load_file(path)
            return {s: saved[str(s)] for s in sites}, {}, {}
        rollout_refs, cost_refs, sums_refs = {}, {}, []
        with self.timer("baseline"):
            for k, (sid, part) in enumerate(shards):
                rollout_refs[sid], cost_refs[sid] = self.rollout.pick(k).generate_costed.options(num_returns=2).remote(
                    sid, part, cfg, signal, params)
                sums_refs += self._gradient(k, "activation_sums", sid, rollout_refs[sid], cfg)
            sums = _get(sums_refs, "mean baseline")
            costs = dict(zip(cost_refs, _get(list(cost_refs.values()), "mean baseline")))
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
        if cfg.resample and cfg.method == "ipg":
            for s in sites:
                path = [st["J_path"][str(s)] for st in ledger.values() if st.get("prompts")]
                out[str(s)]["J_path"] = [[path[0][i][0], sum(p[i][1] for p in path) / n] for i in range(len(path[0]))]
        if not cfg.completeness:
            return out
        ids = {sid: set(ledger[sid]["example_ids"]) for sid, _ in shards}
        scored = [(sid, [ex for ex in part if ex["id"] in ids[sid]]) for sid, part in shards]
        scored = [(sid, part) for sid, part in scored if part]
        alpha_min = cfg.alphas[0][0]
        with self.timer("completeness"):
            for s in sites:
                for name, alpha in (("J_alpha0", 0.0), ("J_alpha_min", alpha_min)):
                    path = out[str(s)].get("J_path")
                    if alpha == 1.0 or (path and alpha == path[0][0]):
                        continue  # filled from J(1) / the resampled path in _diagnostics
                    refs = [self.rollout.pick(k).mean_reward.remote(sid, part, cfg, signal, params, s, alpha, baselines[s])
                            for k, (sid, part) in enumerate(scored)]
                    parts = _get(refs, "completeness")
                    out[str(s)][name] = sum(p[0] for p in parts) / sum(p[1] for p in parts)
        return out


class Dispatch:
    """The order of a run's work, without Ray (so it can be tested alone).

    Rollouts run up to ``lookahead`` shards ahead of the gradient groups; a gradient group is handed a
    shard only when it is free. Shards differ in cost (trajectory lengths, zero-advantage groups): a
    shard queued behind a busy group cannot move to an idle one, so handing work out only on demand
    is what keeps both busy to the end (measured: 8 shards of 0.4-1.5 s on 2 workers, dealt
    alternately ahead of time 5.8 s vs 4.5 s on the busier worker; on demand 4.5 s vs 4.4 s). Of the
    waiting shards whose rollouts are done (cost known), the costliest goes first (longest processing
    time first: the short ones fill the gaps at the end); with none done, the oldest."""

    def __init__(self, shard_ids: list[str], n_groups: int, lookahead: int, generated: set[str] = frozenset()):
        self.queue = [s for s in shard_ids if s not in generated]  # no rollouts yet
        self.waiting = [s for s in shard_ids if s in generated]  # rollouts under way or done, no group yet
        self.free = list(range(n_groups))
        self.lookahead = lookahead
        self.group: dict[str, int] = {}

    def to_generate(self) -> list[str]:
        """Shards whose rollouts to start now."""
        n = max(0, min(len(self.queue), self.lookahead - len(self.waiting)))
        out, self.queue = self.queue[:n], self.queue[n:]
        self.waiting += out
        return out

    def to_attribute(self, costs: dict[str, float] | None = None) -> list[tuple[str, int]]:
        """(shard, group) pairs to start now, onto the free groups. ``costs``: shard -> cost of the
        shards whose rollouts are done."""
        out, costs = [], costs or {}
        while self.free and self.waiting:
            known = [i for i, s in enumerate(self.waiting) if s in costs]
            i = max(known, key=lambda i: (costs[self.waiting[i]], -i)) if known else 0
            sid, g = self.waiting.pop(i), self.free.pop(0)
            self.group[sid] = g
            out.append((sid, g))
        return out

    def attributed(self, sid: str) -> None:
        """The shard's gradient call returned (or failed): its group is free."""
        self.free.append(self.group.pop(sid))

    @property
    def attributing(self) -> list[str]:
        return list(self.group)

    def finished(self) -> bool:
        return not (self.queue or self.waiting or self.group)


def run_shards(plan: Dispatch, generate, attribute, reducer, max_merges: int, in_flight: dict, merged,
               costs: dict | None = None) -> dict:
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
        done, _ = ray.wait(list(attributing) + list(in_flight), num_returns=1)
        if done[0] in attributing:
            plan.attributed(attributing[done[0]])  # a failure surfaces from its merge
        else:
            merged(done[0])
    return tables


def _finished(out_dir: Path, key: str) -> dict | None:
    path = out_dir / DONE
    if not (path.is_file() and (out_dir / "scores.parquet").is_file()):
        return None
    record = json.loads(path.read_text())
    return record if record.get("run_key") == key else None


def _diagnostics(ledger, table, sites, cfg, completeness, seconds, restore) -> dict:
    stats = [s for s in ledger.values()]
    n_prompts = sum(s["prompts"] for s in stats)
    n_traj = sum(s["trajectories"] for s in stats)
    j1 = sum(s["reward_sum"] for s in stats) / n_prompts
    rows = table.to_pydict()
    out_sites = {}
    for site in sites:
        total = float(sum(sc for sc, layer, kind in zip(rows["score"], rows["layer"], rows["kind"])
                          if layer == site.layer and kind == site.kind))
        d = {"sum_scores": total, "J_alpha1": j1, "comparable": cfg.advantage == "none",
             "note": "sum of scores ~ J(1) - J(0) holds for advantage 'none' with on-policy samples (resample)",
             **completeness[str(site)]}
        if cfg.completeness:
            alpha_min = cfg.alphas[0][0]
            path = d.get("J_path")
            for name, alpha in (("J_alpha0", 0.0), ("J_alpha_min", alpha_min)):
                if name not in d:
                    d[name] = j1 if alpha == 1.0 else path[0][1]
            d["alpha_min"] = alpha_min
            d["gap"] = total - (j1 - d["J_alpha0"])
        out_sites[str(site)] = d
    return {
        "sites": out_sites,
        "timings": {"total": round(seconds, 3), "rollout_worker_seconds": round(sum(s["rollout_seconds"] for s in stats), 3),
                    "gradient_worker_seconds": round(sum(s["gradient_seconds"] for s in stats), 3),
                    "reducer_restore_seconds": restore},
        "seconds_per_prompt": round(seconds / n_prompts, 4),
        "mean_reward": j1,
        "mixed_groups": sum(s["mixed"] for s in stats),
        "n_prompts": n_prompts,
        "skipped": {ex: err for s in stats for ex, err in s.get("skipped", {}).items()},
        "n_trajectories": n_traj,
        "mean_generated_tokens": sum(s["tokens"] for s in stats) / max(n_traj, 1),
        "n_shards": len(stats),
        **_gap(stats),
    }


def _gap(stats: list[dict]) -> dict:
    """The rollout engine's log-prob gap to the torch model over all shards (vLLM rollouts only)."""
    gaps = [s["logprob_gap"] for s in stats if "logprob_gap" in s]
    if not gaps:
        return {}
    n = sum(g["n_tokens"] for g in gaps)
    return {"logprob_gap": {"mean_abs": sum(g["sum_abs"] for g in gaps) / max(n, 1),
                            "max_abs": max(g["max_abs"] for g in gaps), "n_tokens": n}}


def attribute_on_ray(model: str | ModelConfig, examples: list[dict], cfg: AttributionConfig | None = None, *,
                     signal: str = "accuracy", signal_params: dict | None = None, out_dir: str | Path,
                     ray_cfg: RayConfig | None = None, run_id: str = "", resume: bool = False, log=print,
                     **settings) -> RayAttribution:
    """One attribution on Ray (connects, or starts a local cluster): the same table as
    ``ipg.attribute`` with the same settings. ``settings`` are AttributionConfig fields when ``cfg`` is None."""
    cfg = cfg or AttributionConfig(**{k: tuple(v) if k == "layers" else v for k, v in settings.items()})
    max_tokens = None
    if (ray_cfg or RayConfig()).rollout_backend == "vllm":  # the engines' context: the longest prompt and its new tokens
        name = model.name if isinstance(model, ModelConfig) else model
        tokenizer = None if all("prompt_ids" in ex for ex in examples) else load_tokenizer(name)
        max_tokens = longest_prompt(tokenizer, examples) + cfg.max_new_tokens
    with RaySession(model, ray_cfg, log, signals=[signal], max_tokens=max_tokens) as session:
        return session.attribute(examples, cfg, signal=signal, signal_params=signal_params, out_dir=out_dir,
                                 run_id=run_id, resume=resume)
