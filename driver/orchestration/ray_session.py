"""A Ray session for one model: its rollout and gradient actor groups (hf or vLLM; torch or DeepSpeed
ZeRO-3), reused across attributions, with the calls the experiment makes on them."""

from __future__ import annotations

import dataclasses
import os

import ray

from ipg.attribution import AttributionConfig, prepare_examples
from ipg.cluster.errors import FatalError
from ipg.cluster.metrics import RUN_ENV, StageTimer, set_run
from ipg.cluster.ray_cluster import ActorGroup, ActorSpec, connect, reserve, upload_modules
from ipg.driver.config import ModelConfig, RayConfig, sae_path
from ipg.driver.orchestration.attribution_unit import AttributionUnits
from ipg.driver.orchestration.dispatch import shard
from ipg.driver.orchestration.ray_errors import get, worker_error
from ipg.driver.orchestration.rollout_choice import resolve
from ipg.driver.orchestration.samplers import RankGroups, RolloutActors
from ipg.models import resolve_model_path
from ipg.signals import signal_source
from ipg.workers.gradient import GradientWorker
from ipg.workers.rollout import RolloutWorker

# A ZeRO-3 rank gathers and frees each block's weights on every call; glibc's allocator keeps such freed
# blocks of a few MB in its heap, and a rank's memory grew to 1.8x its partition on a 1.1B-parameter model
# (bench/large_model.py). Blocks above 1 MiB mapped and unmapped instead: 1.3x, about 13% slower.
# Inert where the C library is not glibc; a value set in the driver's environment is forwarded instead.
RANK_MALLOC = {k: os.environ.get(k, "1048576") for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")}


class RaySession(AttributionUnits):
    """Rollout and gradient actor groups for one model, reused across attributions (``ipg run`` attributes
    many times with the same model). Close it to release the actors and the placement group."""

    def __init__(
        self,
        model: ModelConfig | str = "organism",
        ray_cfg: RayConfig | None = None,
        log=print,
        signals: list[str] = (),
        max_tokens: int | None = None,
        run: str = "ipg",
    ):
        """``signals``: the signals this session will attribute; a user's signal module that no installed
        package provides is shipped to every actor. ``max_tokens``: the longest sequence (prompt and new
        tokens) it will generate; vLLM engines hold that context when ray.vllm.max_model_len is unset.
        ``run``: the run's name, the ``run`` tag of every metric series of this session."""
        self.model = ModelConfig(name=model, saes={}) if isinstance(model, str) else model
        path = resolve_model_path(self.model.name)  # a missing local path fails here, before any actor starts
        self.cfg = resolve(ray_cfg or RayConfig(), self.model, log)  # a run passes it resolved already
        self.log = log
        self.vllm = self._vllm_options(path, max_tokens)
        self.shipped = sorted({str(p) for p in map(signal_source, signals) if p is not None})
        self.info = connect(self.cfg.address)
        self.run = run
        set_run(run)
        c = self.cfg
        spec = ActorSpec(
            num_cpus=c.cpus_per_actor,
            num_gpus=c.gpus_per_actor,
            threads=c.threads_per_actor,
            py_modules=upload_modules(self.shipped),
            env={RUN_ENV: run},
        )
        ranks = c.deepspeed.ranks if c.gradient_backend == "deepspeed" else 1
        # a ZeRO-3 rank cannot rejoin its group after a crash: no restarts (the run fails; --resume continues it)
        rollout_spec = dataclasses.replace(spec, resources=dict(c.rollout_resources))
        spec = dataclasses.replace(spec, resources=dict(c.gradient_resources))
        rank_spec = spec
        if c.gradient_backend == "deepspeed":
            rank_spec = dataclasses.replace(spec, max_restarts=0, max_task_retries=0, env={**spec.env, **RANK_MALLOC})
        by_ranks = c.rollout_backend == "deepspeed"  # the ZeRO-3 groups sample too: no rollout actors
        groups = {
            "rollout": (0 if by_ranks else c.rollout_workers, rollout_spec),
            "gradient": (c.gradient_workers * ranks, rank_spec),
        }
        self.placement_group, first = reserve(groups, c.placement_strategy, c.placement_timeout_s, log)
        m = self.model
        saes = {layer: sae_path(path, m.name, layer) for layer, path in m.saes.items()}
        common = dict(
            dtype=m.dtype,
            device=m.device,
            trust_remote_code=m.trust_remote_code,
            saes=saes,
            threads=c.threads_per_actor,
        )

        def group(cls, n: int, actor_spec: ActorSpec, pool: str, **options) -> ActorGroup:
            """``n`` actors of ``cls`` for the model, in the placement group's bundles of ``pool``."""
            return ActorGroup(cls, n, actor_spec, m.name, placement_group=self.placement_group, first_bundle=first[pool],
                              **common, **options)  # fmt: skip

        self.rollout = None
        if not by_ranks:
            self.rollout = group(RolloutWorker, c.rollout_workers, rollout_spec, "rollout", backend=c.rollout_backend,
                                 vllm=self.vllm)  # fmt: skip
        if c.gradient_backend == "deepspeed":
            from ipg.workers.deepspeed_backend import DeepSpeedGradientRank

            world = [{"rank": i % ranks, "world": ranks} for i in range(c.gradient_workers * ranks)]
            self.gradient = group(DeepSpeedGradientRank, c.gradient_workers * ranks, rank_spec, "gradient", per_actor=world,
                                  offload_params=c.deepspeed.offload_params, timeout_s=c.deepspeed.timeout_s)  # fmt: skip
        else:
            self.gradient = group(GradientWorker, c.gradient_workers, spec, "gradient", backend=c.gradient_backend)
        self.groups = [self.gradient.actors[g * ranks : (g + 1) * ranks] for g in range(c.gradient_workers)]
        self.sampler = RankGroups(self.groups) if by_ranks else RolloutActors(self.rollout)
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
        from ipg.workers.vllm_sizing import preflight, whole_blocks

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
            raise FatalError(
                f"deepspeed group: the ranks did not form a group within ray.deepspeed.timeout_s="
                f"{self.cfg.deepspeed.timeout_s:g} s (a rank stuck loading or unable to reach "
                f"{addr}:{port}); check the rank actors' logs, or raise ray.deepspeed.timeout_s"
            ) from None
        except ray.exceptions.RayError as e:
            self.close()
            err = worker_error(e, "deepspeed group")
            raise err from err.original
        for m in memory:
            self.log(
                f"  zero3 rank {m['rank']}: {m['local_params']:,} of {m['full_params']:,} parameters "
                f"({m['local_bytes'] / 2**20:.1f} of {m['full_bytes'] / 2**20:.1f} MiB)"
            )
        return memory

    def _ready(self) -> None:
        """Wait until every actor has loaded the model, so a broken model or environment fails here,
        once, with the worker's own message (and timings of the attributions exclude start-up)."""
        try:
            ray.get([a.ready.remote() for a in self.actors()])
        except ray.exceptions.RayError as e:
            self.close()
            err = worker_error(e, "workers failed to start", starting=True)
            raise err from err.original

    def actors(self) -> list:
        return (self.rollout.actors if self.rollout is not None else []) + self.gradient.actors

    def close(self) -> None:
        from ray.util.placement_group import remove_placement_group

        for group in (self.rollout, self.gradient):
            if group is not None:
                group.kill()
        remove_placement_group(self.placement_group)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def steered_generate(self, examples: list[dict], params, steering: dict | None = None) -> list:
        """Generation under steering in the samplers (the rollout actors' engines, or the ZeRO-3 groups),
        prompts split across them; the samples come back in input order."""
        n = len(self.sampler)
        parts = [examples[i::n] for i in range(n)]
        refs = [self.sampler.steered_generate(i, part, params, steering) for i, part in enumerate(parts) if part]
        by_id = {g[0].example_id: g for res in get(refs, "steered generation") for g in res}
        return [by_id[ex["id"]] for ex in examples]

    def steered_generate_many(self, jobs: list, params, positions: str, batch_size: int, pack_tokens: int) -> list:
        """Many evaluations (``ipg.packing.Job``s) in the samplers: each sampler takes its share of every
        evaluation's prompts (the same share ``steered_generate`` gives it) and runs them all together, packed;
        rows are independent of which sampler holds them, so no packing changes an output. Per evaluation,
        the samples come back in input order."""
        from ipg.packing import Job

        n = len(self.sampler)
        shares = [[Job(job.examples[i::n], job.steering) for job in jobs] for i in range(n)]
        refs = [
            self.sampler.steered_generate_many(i, share, params, positions, batch_size, pack_tokens)
            for i, share in enumerate(shares)
            if any(job.examples for job in share)
        ]
        by_id: list[dict] = [{} for _ in jobs]
        for res in get(refs, "steered generation"):
            for k, groups in enumerate(res):
                by_id[k].update({g[0].example_id: g for g in groups})
        return [[by_id[k][ex["id"]] for ex in job.examples] for k, job in enumerate(jobs)]

    def rollouts(self, examples: list[dict], cfg: AttributionConfig, signal: str, signal_params: dict) -> list:
        """An attribution's support rollouts, drawn again in the samplers shard by shard (sampling is
        seeded per example and sample: the trajectories the attribution scored), in input order."""
        refs = [
            self.sampler.generate(k, sid, part, cfg, signal, signal_params)
            for k, (sid, part) in enumerate(shard(prepare_examples(examples), self.cfg.shard_size))
        ]
        return [r for part in get(refs, "support rollouts") for r in part.rollouts]
