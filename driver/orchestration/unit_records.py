"""The record of one attribution unit on Ray: its result, its run key (what must match to resume it),
the files it leaves, and its diagnostics, built from the reducer's ledger."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

from ipg.attribution import AttributionConfig
from ipg.completeness import completeness_record

RESULT_RECORD = "attribution.json"  # run key, settings, diagnostics; written last: the unit is complete
BASELINE = "baseline.safetensors"  # the mean baseline, so a resumed run uses the same one


def run_key(
    model: str, signal: str, signal_params: dict, cfg: AttributionConfig, shards, candidates: dict | None = None
) -> str:
    """What must match for a unit to resume: model, signal, settings, shards and the model inputs (the same
    ids under another prompt format are another run). Not the run id: a label, which a resume may set anew."""
    inputs = hashlib.sha256(
        json.dumps([ex.get("prompt_ids") for _, part in shards for ex in part]).encode()
    ).hexdigest()
    plan = {
        "model": model,
        "signal": signal,
        "signal_params": signal_params,
        "config": dataclasses.asdict(cfg),
        "shards": [[sid, [ex["id"] for ex in part]] for sid, part in shards],
        "inputs": inputs,
    }
    if candidates is not None:  # method 'component': the components it re-scores
        plan["candidates"] = {str(site): list(idx) for site, idx in sorted(candidates.items())}
    return hashlib.sha256(json.dumps(plan, sort_keys=True, default=str).encode()).hexdigest()[:16]


def finished_record(out_dir: Path, key: str) -> dict | None:
    path = out_dir / RESULT_RECORD
    if not (path.is_file() and (out_dir / "scores.parquet").is_file()):
        return None
    record = json.loads(path.read_text())
    return record if record.get("run_key") == key else None


def diagnostics(ledger, table, sites, cfg, completeness, seconds, restore) -> dict:
    stats = [s for s in ledger.values()]
    n_prompts = sum(s["prompts"] for s in stats)
    n_traj = sum(s["trajectories"] for s in stats)
    j1 = sum(s["reward_sum"] for s in stats) / n_prompts
    rows = table.to_pydict()
    out_sites = {}
    for site in sites:
        total = float(
            sum(
                sc
                for sc, layer, kind in zip(rows["score"], rows["layer"], rows["kind"])
                if layer == site.layer and kind == site.kind
            )
        )
        out_sites[str(site)] = completeness_record(cfg, total, j1, completeness[str(site)])
    return {
        "sites": out_sites,
        "timings": {
            "total": round(seconds, 3),
            "rollout_worker_seconds": round(sum(s["rollout_seconds"] for s in stats), 3),
            "gradient_worker_seconds": round(sum(s["gradient_seconds"] for s in stats), 3),
            "reducer_restore_seconds": restore,
        },
        "seconds_per_prompt": round(seconds / n_prompts, 4),
        "mean_reward": j1,
        "mixed_groups": sum(s["mixed"] for s in stats),
        "n_prompts": n_prompts,
        "skipped": {ex: err for s in stats for ex, err in s.get("skipped", {}).items()},
        "n_trajectories": n_traj,
        "mean_generated_tokens": sum(s["tokens"] for s in stats) / max(n_traj, 1),
        "n_shards": len(stats),
        **logprob_gap(stats),
    }


def logprob_gap(stats: list[dict]) -> dict:
    """The rollout engine's log-prob gap to the torch model over all shards (vLLM rollouts only)."""
    gaps = [s["logprob_gap"] for s in stats if "logprob_gap" in s]
    if not gaps:
        return {}
    n = sum(g["n_tokens"] for g in gaps)
    return {
        "logprob_gap": {
            "mean_abs": sum(g["sum_abs"] for g in gaps) / max(n, 1),
            "max_abs": max(g["max_abs"] for g in gaps),
            "n_tokens": n,
        }
    }
