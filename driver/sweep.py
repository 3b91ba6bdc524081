"""Sweeps: the product models x signals x layers x kinds x methods, each cell one attribution (and,
optionally, its steering evaluation), resumable cell by cell and, on Ray, shard by shard.

A spec (``deploy/sweeps/*.yaml``)::

    name: organism-2x2
    base: deploy/configs/organism.yaml   # optional run config the cells start from
    config: {attribution: {q: 4}}        # overrides of that config (any run-config key)
    models: [organism]                   # names, or {name:, saes:, dtype:, device:, ...}
    signals: [accuracy, length]          # names, or {name:, params: {...}}
    layers: [1, 2]
    kinds: [residual]
    methods: [ipg]
    steering: {p: 8, gammas: [0.0, 1.5]} # optional: greedy eval with the cell's top-p scaled by gamma
    out: runs/sweeps/organism-2x2        # local path or URI (s3://..., gs://..., memory://...)
    pushgateway: {address: host:9091}    # optional: push the outcome when it ends (driver/sweep_push.py)

Results (under ``out``):
- ``scores/model=M/signal=S/layer=L/<cell>.parquet``: the cell's IPG scores (hive-partitioned dataset);
- ``steering/model=M/signal=S/layer=L/<cell>.parquet``: its steering evaluation (when asked for);
- ``cells/<cell>.json``: the cell's status (running, done, failed), timings, diagnostics;
- ``summary.parquet`` / ``summary.md``: one row a cell: top components, completeness gap, steering effect.

A cell whose status is done is skipped on a rerun. A cell interrupted mid-way is run again; on Ray its
attribution unit (``<work>/<model>/attributions/<run_id>``: the reducer's ledger and snapshot) continues
from the shards already merged. ``work`` is ``out/work`` for a local ``out``, else a local directory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import re
import time
import traceback
from pathlib import Path

import pyarrow as pa
import yaml

from ipg.components import KINDS
from ipg.driver.config import RunConfig, build_section, read_yaml, set_overrides, validate
from ipg.driver.storage import Store
from ipg.driver.sweep_push import STATUSES as PUSHED_STATUSES
from ipg.driver.sweep_push import Pushgateway
from ipg.errors import InputError
from ipg.methods import DEFAULT as DEFAULT_METHOD
from ipg.methods import METHODS
from ipg.scores import select
from ipg.signals import make_signal, signal_names

SPEC_KEYS = {
    "name",
    "base",
    "config",
    "models",
    "signals",
    "layers",
    "kinds",
    "methods",
    "steering",
    "out",
    "pushgateway",
}
# the evaluation metric a signal steers, and whether higher is the aim
METRIC = {"accuracy": "accuracy", "length": "mean_length", "reflection": "reflection_share", "reward_model": "accuracy"}
# fmt: off
SUMMARY_SCHEMA = pa.schema([
    ("cell", pa.string()), ("model", pa.string()), ("signal", pa.string()), ("layer", pa.int32()),
    ("kind", pa.string()), ("method", pa.string()), ("status", pa.string()), ("seconds", pa.float64()),
    ("top_components", pa.string()), ("top_score", pa.float64()), ("completeness_gap", pa.float64()),
    ("metric", pa.string()), ("metric_original", pa.float64()), ("steering_effect", pa.string()),
])
# fmt: on


class SweepFailed(RuntimeError):
    """Some cells failed (each recorded in cells/<cell>.json); the others are done."""


@dataclasses.dataclass(frozen=True)
class Cell:
    model: str
    signal: str
    signal_params: tuple  # sorted (key, value) pairs: hashable
    layer: int
    kind: str
    method: str

    @property
    def id(self) -> str:
        # signal parameters by a short hash: the same signal with other parameters is another cell
        params = (
            "-" + hashlib.sha256(json.dumps(self.signal_params).encode()).hexdigest()[:8] if self.signal_params else ""
        )
        return _slug(f"{self.model}__{self.signal}{params}__L{self.layer}__{self.kind}__{self.method}")

    def partition(self) -> str:
        return f"model={_slug(self.model)}/signal={_slug(self.signal)}/layer={self.layer}"


@dataclasses.dataclass(frozen=True)
class SweepSpec:
    name: str
    path: str
    models: list[dict]
    signals: list[tuple[str, dict]]
    layers: list[int]
    kinds: list[str]
    methods: list[str]
    steering: dict | None
    out: str
    tree: dict  # the run config every cell starts from (base + config), before the model is set
    pushgateway: Pushgateway | None = None

    def cells(self) -> list[Cell]:
        return [
            Cell(m["name"], s, tuple(sorted(params.items())), layer, kind, method)
            for m, (s, params), layer, kind, method in itertools.product(
                self.models, self.signals, self.layers, self.kinds, self.methods
            )
        ]

    def run_config(self, model: dict, out: str) -> RunConfig:
        tree = _merge(self.tree, {"model": model, "out": out})
        try:
            return validate(build_section(RunConfig, tree, ""))
        except InputError as e:
            raise InputError(f"{self.path}: {e}") from None


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "--", text)


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _list(spec: dict, key: str, path: str, kind, allowed=None) -> list:
    value = spec.get(key)
    if not isinstance(value, list) or not value:
        raise InputError(f"{path}: '{key}' must be a non-empty list")
    for v in value:
        if not isinstance(v, kind) or isinstance(v, bool):
            raise InputError(
                f"{path}: {key}: '{v}' is not a {kind.__name__ if isinstance(kind, type) else 'name or mapping'}"
            )
        name = v["name"] if isinstance(v, dict) else v
        if allowed and name not in allowed:
            raise InputError(f"{path}: {key}: unknown '{name}'; use one of {', '.join(allowed)}")
    if len({yaml.safe_dump(v) for v in value}) != len(value):
        raise InputError(f"{path}: '{key}' lists a value twice")
    return value


def load_spec(path: str, out: str | None = None) -> SweepSpec:
    p = Path(path)
    spec = read_yaml(p, "--spec") or {}
    if not isinstance(spec, dict):
        raise InputError(f"--spec: '{path}' must be a mapping of {', '.join(sorted(SPEC_KEYS))}")
    unknown = set(spec) - SPEC_KEYS
    if unknown:
        raise InputError(
            f"{path}: unknown key(s) {', '.join(sorted(unknown))}; a sweep spec has {', '.join(sorted(SPEC_KEYS))}"
        )
    name = spec.get("name") or p.stem
    tree: dict = {}
    if spec.get("base"):
        base = Path(spec["base"])
        base = base if base.is_file() else p.parent / spec["base"]
        if not base.is_file():
            raise InputError(f"{path}: base: run config '{spec['base']}' not found")
        tree = read_yaml(base, f"{path}: base") or {}
    config = spec.get("config") or {}
    if not isinstance(config, dict):
        raise InputError(f"{path}: config: must be a mapping of run-config keys (e.g. attribution: {{q: 4}})")
    tree = _merge(tree, config)
    models = [m if isinstance(m, dict) else {"name": m} for m in _list(spec, "models", path, (str, dict))]
    base_model = tree.get("model", {}) or {}
    models = [
        {**({} if m.get("name", base_model.get("name")) != base_model.get("name") else base_model), **m} for m in models
    ]
    for m in models:  # a model's SAEs are its own: the base config's apply only to the base config's model
        m.setdefault("saes", {})
    signals = []
    for s in _list(spec, "signals", path, (str, dict)):
        if isinstance(s, dict) and set(s) - {"name", "params"}:
            raise InputError(
                f"{path}: signals: '{s.get('name')}' has unknown keys {sorted(set(s) - {'name', 'params'})}; use name and params"
            )
        signal, params = (s, {}) if isinstance(s, str) else (s["name"], dict(s.get("params") or {}))
        if signal not in signal_names() and ":" not in str(signal):
            raise InputError(
                f"{path}: signals: unknown '{signal}'; use one of {', '.join(signal_names())} or an import "
                "path 'package.module:function'"
            )
        if ":" in str(signal):  # importable and constructible before any cell runs
            try:
                make_signal(signal, **params)
            except InputError as e:
                raise InputError(f"{path}: signals: {e}") from None
        signals.append((signal, params))
    layers = _list(spec, "layers", path, int)
    if any(layer < 0 for layer in layers):
        raise InputError(f"{path}: layers: indices must be >= 0, got {layers}")
    steering = spec.get("steering")
    if steering is not None:
        if not isinstance(steering, dict) or set(steering) - {"p", "gammas"} or "p" not in steering:
            raise InputError(f"{path}: steering: expected {{p: N, gammas: [..]}}, got {steering}")
        gammas = steering.get("gammas", [0.0, 1.5])
        if (
            not isinstance(steering["p"], int)
            or steering["p"] < 1
            or not gammas
            or any(not isinstance(g, (int, float)) or g < 0 for g in gammas)
        ):
            raise InputError(f"{path}: steering: p must be an integer >= 1 and gammas a non-empty list of numbers >= 0")
        steering = {"p": steering["p"], "gammas": [float(g) for g in gammas]}
    out = out or spec.get("out") or f"runs/sweeps/{name}"
    s = SweepSpec(
        name=name,
        path=str(path),
        models=models,
        signals=signals,
        layers=layers,
        kinds=_list(spec, "kinds", path, str, KINDS) if "kinds" in spec else ["residual"],
        methods=_list(spec, "methods", path, str, METHODS) if "methods" in spec else [DEFAULT_METHOD],
        steering=steering,
        out=str(out),
        tree=tree,
        pushgateway=Pushgateway.from_spec(spec.get("pushgateway"), str(path)),
    )
    for m in s.models:  # every model's config must validate before any cell runs
        s.run_config(m, "unused")
    return s


class Sweep:
    def __init__(self, spec: SweepSpec, log=print, work: str | None = None):
        self.spec, self.log = spec, log
        self.store = Store(spec.out)
        if work is None:
            work = (
                str(Path(self.store.root) / "work")
                if self.store.local
                else str(Path.home() / ".cache" / "ipg" / "sweeps" / _slug(spec.name))
            )
        self.work = Path(work)

    def status(self, cell: Cell) -> dict | None:
        return self.store.read_json(f"cells/{cell.id}.json")

    def state(self, cell: Cell) -> str:
        """done (its status says so and its scores are written), running, failed, or pending."""
        st = self.status(cell) or {}
        if st.get("status") == "done":
            return "done" if self.store.exists(st["scores"]) else "pending"
        return st.get("status") or "pending"

    def done(self, cell: Cell) -> bool:
        return self.state(cell) == "done"

    def run(self) -> pa.Table:
        """Every cell not done yet; with a pushgateway in the spec, the outcome is pushed when it ends,
        however it ends."""
        start, succeeded = time.perf_counter(), False
        try:
            table = self._run()
            succeeded = True
            return table
        finally:
            if self.spec.pushgateway is not None:
                counts = dict.fromkeys(PUSHED_STATUSES, 0)
                for cell in self.spec.cells():  # a cell still 'running' at the end was interrupted: pending
                    state = self.state(cell)
                    counts[state if state in counts else "pending"] += 1
                self.spec.pushgateway.push(
                    self.spec.name,
                    counts,
                    time.perf_counter() - start,
                    succeeded and counts["done"] == sum(counts.values()),
                    self.log,
                )

    def _run(self) -> pa.Table:
        cells = self.spec.cells()
        todo = [c for c in cells if not self.done(c)]
        self.log(
            f"sweep {self.spec.name}: {len(cells)} cells, {len(cells) - len(todo)} done, {len(todo)} to run -> {self.spec.out}"
        )
        failed = []
        for model in self.spec.models:
            mine = [c for c in todo if c.model == model["name"]]
            if not mine:
                continue
            from ipg.driver.experiment import Experiment

            cfg = self.spec.run_config(model, str(self.work / _slug(model["name"])))
            exp = Experiment(
                cfg, self.log, resume_units=True, signals=sorted({c.signal for c in mine}), run_name=self.spec.name
            )
            try:
                original = None
                for cell in mine:
                    try:
                        if self.spec.steering and original is None:
                            original = exp.evaluate(
                                None, experiment="sweep", method="original", layer=-1, p=0, gamma=1.0, seed=cfg.seeds[0]
                            )
                        self._run_cell(exp, cfg, cell, original)
                    except InputError:
                        raise
                    except Exception as e:  # noqa: BLE001 - recorded in the cell's status, the sweep goes on
                        failed.append(cell.id)
                        self._write_status(
                            cell, "failed", error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc()[-4000:]
                        )
                        self.log(f"  {cell.id}: FAILED ({type(e).__name__}: {e})")
            finally:
                if exp.session is not None:
                    exp.session.close()
        summary = self.summary()
        if failed:
            raise SweepFailed(
                f"sweep {self.spec.name}: {len(failed)} cell(s) failed ({', '.join(failed)}); their "
                f"errors are in {self.spec.out}/cells/<cell>.json; rerun the same command to retry them"
            )
        return summary

    def _write_status(self, cell: Cell, status: str, **fields) -> None:
        prev = self.status(cell) or {}
        self.store.write_json(
            f"cells/{cell.id}.json",
            {
                **{k: v for k, v in prev.items() if k in ("started", "attempts")},
                **dataclasses.asdict(cell),
                "signal_params": dict(cell.signal_params),
                "cell": cell.id,
                "status": status,
                "updated": time.time(),
                **fields,
            },
        )

    def _run_cell(self, exp, cfg: RunConfig, cell: Cell, original: dict | None) -> None:
        prev = self.status(cell) or {}
        attempts = prev.get("attempts", 0) + 1
        self._write_status(cell, "running", started=prev.get("started", time.time()), attempts=attempts)
        self.log(f"  {cell.id}: attributing" + (f" (attempt {attempts})" if attempts > 1 else ""))
        start = time.perf_counter()
        params = dict(cell.signal_params)
        if cell.signal == "reflection" and "keywords" not in params:
            params["keywords"] = list(cfg.baselines.reflection_words)
        res = exp.attribute(
            exp.support(cfg.seeds[0]),
            signal=cell.signal,
            layers=[cell.layer],
            seed=cfg.seeds[0],
            method=cell.method,
            kind=cell.kind,
            signal_params=params,
            tag=f"-L{cell.layer}",
        )
        table = res.table.replace_schema_metadata(None)
        # the partition keys live in the path: the file keeps the model's fingerprint under its own name
        table = table.drop_columns(["signal", "layer"]).rename_columns(
            ["model_fingerprint" if n == "model" else n for n in table.drop_columns(["signal", "layer"]).column_names]
        )
        scores = f"scores/{cell.partition()}/{cell.id}.parquet"
        steering_rows = []
        if self.spec.steering:
            p = min(self.spec.steering["p"], res.table.num_rows)
            components = select(res.table, p, layer=cell.layer, kind=cell.kind)
            metric = METRIC.get(cell.signal, "accuracy")  # a user's signal: steering is judged by accuracy
            for gamma in self.spec.steering["gammas"]:  # the cell's gammas generated together
                exp.queue(
                    {"scale": components, "gamma": gamma},
                    experiment="sweep",
                    method=cell.method,
                    layer=cell.layer,
                    p=p,
                    gamma=gamma,
                    seed=cfg.seeds[0],
                )
            for gamma, r in zip(self.spec.steering["gammas"], exp.flush()):
                steering_rows.append(
                    {
                        "cell": cell.id,
                        "kind": cell.kind,
                        "method": cell.method,
                        "p": p,
                        "gamma": gamma,
                        "metric": metric,
                        "value": float(r[metric]),
                        "original": float(original[metric]),
                        "effect": float(r[metric] - original[metric]),
                        "n_eval": r["n"],
                    }
                )
                self.log(f"    gamma {gamma:4.2f}: {metric} {r[metric]:.3f} (original {original[metric]:.3f})")
            self.store.write_parquet(
                f"steering/{cell.partition()}/{cell.id}.parquet", pa.Table.from_pylist(steering_rows)
            )
        self.store.write_parquet(
            scores, table
        )  # the scores last: their presence + status 'done' mark the cell finished
        sites = res.diagnostics.get("sites", {})
        gap = next((s.get("gap") for s in sites.values() if isinstance(s, dict) and s.get("gap") is not None), None)
        self._write_status(
            cell,
            "done",
            seconds=round(time.perf_counter() - start, 2),
            scores=scores,
            finished=time.time(),
            completeness_gap=gap,
            n_prompts=res.diagnostics.get("n_prompts"),
            steering=steering_rows,
            diagnostics={
                k: v
                for k, v in res.diagnostics.items()
                if k in ("n_prompts", "mixed_groups", "seconds_per_prompt", "n_shards")
            },
        )
        self.log(f"  {cell.id}: done in {time.perf_counter() - start:.1f} s")

    def summary(self) -> pa.Table:
        rows = []
        for cell in self.spec.cells():
            st = self.status(cell) or {"status": "pending"}
            top, top_score = "", None
            if st.get("status") == "done" and self.store.exists(st["scores"]):
                t = self.store.read_parquet(st["scores"]).sort_by([("score", "descending"), ("index", "ascending")])
                top = " ".join(str(i) for i in t.column("index").to_pylist()[:5])
                top_score = t.column("score")[0].as_py() if t.num_rows else None
            steer = st.get("steering") or []
            rows.append(
                {
                    "cell": cell.id,
                    "model": cell.model,
                    "signal": cell.signal,
                    "layer": cell.layer,
                    "kind": cell.kind,
                    "method": cell.method,
                    "status": st["status"],
                    "seconds": st.get("seconds"),
                    "top_components": top,
                    "top_score": top_score,
                    "completeness_gap": st.get("completeness_gap"),
                    "metric": steer[0]["metric"] if steer else None,
                    "metric_original": steer[0]["original"] if steer else None,
                    "steering_effect": " ".join(f"g{r['gamma']:g}:{r['effect']:+.3f}" for r in steer),
                }
            )
        table = pa.Table.from_pylist(rows, schema=SUMMARY_SCHEMA)
        self.store.write_parquet("summary.parquet", table)
        self.store.write_text("summary.md", render_summary(self.spec.name, table))
        return table


def render_summary(name: str, table: pa.Table) -> str:
    cols = [
        "cell",
        "status",
        "seconds",
        "top_components",
        "completeness_gap",
        "metric",
        "metric_original",
        "steering_effect",
    ]

    def fmt(v):
        if v is None:
            return "-"
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = [f"# sweep {name}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in table.to_pylist():
        lines.append("| " + " | ".join(fmt(r[c]) for c in cols) + " |")
    counts = {s: table.column("status").to_pylist().count(s) for s in ("done", "running", "failed", "pending")}
    lines += ["", "cells: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n)]
    return "\n".join(lines) + "\n"


def apply_overrides(spec: SweepSpec, overrides: list[str]) -> SweepSpec:
    """``ray.*`` keys for every cell (``--ray.rollout_resources={ipg_rollout: 1}``) on top of the spec's
    ``config``: where a sweep runs, never what it measures. Validated for every model."""
    if not overrides:
        return spec
    tree = set_overrides(
        json.loads(json.dumps(spec.tree)),
        overrides,
        prefix="ray.",
        refusal="a sweep takes --ray.key=value overrides only (where it runs); what it measures "
        "belongs in the spec's config, so finished cells stay comparable",
    )
    spec = dataclasses.replace(spec, tree=tree)
    for m in spec.models:
        spec.run_config(m, "unused")
    return spec


def run_sweep(
    spec_path: str,
    *,
    out: str | None = None,
    ray: bool = False,
    address: str | None = None,
    work: str | None = None,
    overrides: list[str] | None = None,
    pushgateway: str | None = None,
    log=print,
) -> pa.Table:
    """``pushgateway``: a gateway address that replaces the spec's (the scheduled job's own setting)."""
    spec = apply_overrides(load_spec(spec_path, out), overrides or [])
    if pushgateway:  # the spec's job and timeout, if it has a gateway, at this address
        gateway = (
            dataclasses.replace(spec.pushgateway, address=pushgateway) if spec.pushgateway else Pushgateway(pushgateway)
        )
        spec = dataclasses.replace(spec, pushgateway=gateway)
    if ray or address:
        ray_tree = {"enabled": True, **({"address": address} if address else {})}
        spec = dataclasses.replace(spec, tree=_merge(spec.tree, {"ray": ray_tree}))
    sweep = Sweep(spec, log, work)
    table = sweep.run()
    log(render_summary(spec.name, table))
    return table
