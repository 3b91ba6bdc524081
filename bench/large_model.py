"""A model that no process of the run can hold, attributed end to end on Ray by one 2-rank ZeRO-3 group
that samples too (ray.rollout_backend and ray.gradient_backend 'deepspeed'), every process under a
memory cap smaller than the model; its scores against an uncapped in-process run.

    sudo python bench/large_model.py --out bench/results/large_model.json   # root: cgroup v1 memory caps

Steps, each in a fresh process:
1. build: a random-weight Llama (``--layers`` x hidden 2048) saved in bfloat16, 256 MB safetensors shards
   (a published checkpoint's layout), with the word-level tokenizer of bench/random_models.py; runs load it
   in float32, so "the weights' bytes" below are float32 bytes, held in each process's own memory;
2. reference: ``ipg.attribute`` in one uncapped process;
3. control: one process under the cap loads the model with ``from_pretrained`` in float32; it must be killed;
4. capped: the driver in its own memory cgroup (cap = ``--cap`` x the weights' bytes) starts a local Ray
   cluster (its system processes inherit the driver's cgroup); a worker setup hook moves every Ray worker
   process into a cgroup of its own with the same cap before it imports anything, so both ranks, the
   reducer and the merge tasks run capped. The run then attributes the prompts through ``RaySession``.

The orchestrator samples each cgroup's anonymous memory (memory.stat ``rss``: what cannot be reclaimed;
page cache from reading the shards is charged too but reclaimed under the cap) every 0.2 s and reports
the peak per process, the cap, the weights' bytes, and max |score diff| / max |score| against the
reference.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from record import measured_on  # bench/record.py

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # bench.random_models: the prompts and the signal
CGROUPS = Path("/sys/fs/cgroup/memory")
SETTINGS = dict(q=2, n_samples=2, max_new_tokens=16, seed=0, completeness=False, method="ipg")
SIGNAL = "bench.random_models:varied"


def shape(layers: int) -> dict:
    return dict(
        hidden_size=2048,
        intermediate_size=5632,
        num_hidden_layers=layers,
        num_attention_heads=16,
        num_key_value_heads=4,
        vocab_size=8192,
    )


def cgroup(name: str, cap_bytes: int) -> Path:
    """A fresh cgroup v1 memory group under ipg-bench/ with the cap (no swap on these machines)."""
    path = CGROUPS / "ipg-bench" / name
    path.mkdir(parents=True, exist_ok=True)
    (path / "memory.limit_in_bytes").write_text(str(cap_bytes))
    return path


def clear_cgroups() -> None:
    """Remove the benchmark's (empty) groups."""
    for group in sorted((CGROUPS / "ipg-bench").glob("*")):
        try:
            group.rmdir()
        except OSError:
            pass


def enter(path: Path) -> None:
    (path / "cgroup.procs").write_text(str(os.getpid()))


def build(model_dir: Path, layers: int) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from bench.random_models import tokenizer as word_tokenizer

    # Llama, not Qwen2: AutoTokenizer would give a qwen2 model its own tokenizer class instead of this one
    cfg = LlamaConfig(
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
        **shape(layers),
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    n_params = sum(p.numel() for p in model.parameters())
    # stored in bfloat16 (as published checkpoints are), run in float32: loading copies the weights into the
    # process's own memory. A float32 checkpoint would be mapped from the page cache, which the kernel can
    # evict and re-read under any cap, so a cap would not show what a process holds
    model.to(torch.bfloat16).save_pretrained(model_dir, max_shard_size="256MB")
    (model_dir / "ipg-bench.json").write_text(json.dumps({"params": n_params, "float32_bytes": 4 * n_params}))
    word_tokenizer(cfg.vocab_size).save_pretrained(model_dir)  # its EOS lies past the vocabulary: full-length samples


def prompts(n: int) -> list[dict]:
    from bench.random_models import prompts as random_prompts

    return random_prompts(n, length=16)


def reference(model_dir: Path, layer: int, n: int, out: Path, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    import pyarrow.parquet as pq

    from ipg.attribution import attribute
    from ipg.models import load_model

    model, tok = load_model(str(model_dir))
    start = time.perf_counter()
    res = attribute(model, tok, prompts(n), signal=SIGNAL, layers=[layer], **SETTINGS)
    pq.write_table(res.table, out / "reference.parquet")
    (out / "reference.json").write_text(json.dumps({"seconds": time.perf_counter() - start}))


def control(model_dir: Path, cap_bytes: int) -> None:
    enter(cgroup("control", cap_bytes))
    import torch
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    print("control: loaded under the cap (it should not have)")


def capped(model_dir: Path, layer: int, n: int, out: Path, cap_bytes: int) -> None:
    enter(cgroup("driver", cap_bytes))
    import pyarrow.parquet as pq
    import ray

    def cap_worker():  # runs first in every Ray worker process
        import os
        from pathlib import Path

        group = Path("/sys/fs/cgroup/memory/ipg-bench") / f"worker-{os.getpid()}"
        group.mkdir(parents=True, exist_ok=True)
        (group / "memory.limit_in_bytes").write_text(str(cap_bytes))
        (group / "cgroup.procs").write_text(str(os.getpid()))

    ray.init(
        address="local",
        _node_ip_address="127.0.0.1",
        include_dashboard=False,
        num_cpus=2,
        log_to_driver=False,
        object_store_memory=512 * 2**20,
        runtime_env={"worker_process_setup_hook": cap_worker},
    )
    from ipg.attribution import AttributionConfig
    from ipg.driver.config import DeepSpeedConfig, RayConfig
    from ipg.driver.orchestration.pipeline import RaySession

    cfg = RayConfig(
        enabled=True,
        gradient_workers=1,
        shard_size=2,
        max_in_flight=1,
        progress="lines",
        rollout_backend="deepspeed",
        gradient_backend="deepspeed",
        deepspeed=DeepSpeedConfig(ranks=2, timeout_s=1800),
    )
    start = time.perf_counter()
    with RaySession(str(model_dir), cfg, signals=[SIGNAL]) as session:
        joined = time.perf_counter() - start
        pids = {
            f"rank {i}": ray.get(a.__ray_call__.remote(lambda self: os.getpid()))
            for i, a in enumerate(session.gradient.actors)
        }
        res = session.attribute(
            prompts(n), AttributionConfig(layers=(layer,), **SETTINGS), signal=SIGNAL, out_dir=out / "run"
        )
    pq.write_table(res.table, out / "capped.parquet")
    (out / "capped.json").write_text(
        json.dumps(
            {
                "seconds": time.perf_counter() - start,
                "join_seconds": joined,
                "pids": pids,
                "driver_pid": os.getpid(),
                "zero3": session.info["zero3"],
            }
        )
    )


class Monitor(threading.Thread):
    """Peak anonymous memory (bytes) of every cgroup under ipg-bench/, sampled every 0.2 s."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peaks, self.now, self.stop = {}, {}, threading.Event()

    def run(self):
        start, shown = time.time(), 0.0
        while not self.stop.is_set():
            if time.time() - shown >= 10:  # a line every 10 s: the run's memory as it goes
                shown = time.time()
                print(
                    f"  memory at {shown - start:.0f} s: "
                    + ", ".join(f"{g} {b / 2**30:.2f} GiB" for g, b in sorted(self.now.items())),
                    flush=True,
                )
            for group in (CGROUPS / "ipg-bench").glob("*"):
                try:
                    stat = dict(line.split() for line in (group / "memory.stat").read_text().splitlines())
                except OSError:
                    continue
                self.now[group.name] = int(stat["rss"]) + int(stat.get("shmem", 0))
                self.peaks[group.name] = max(self.peaks.get(group.name, 0), self.now[group.name])
            time.sleep(0.2)


def child(stage: str, args, *extra: str, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        __file__,
        "--stage",
        stage,
        "--layers",
        str(args.layers),
        "--prompts",
        str(args.prompts),
        "--cap",
        str(args.cap),
        "--work",
        str(args.work),
        *extra,
    ]
    print(f"[{time.strftime('%H:%M:%S')}] {stage} ...", flush=True)
    return subprocess.run(cmd, check=check, cwd=ROOT)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument(
        "--cap", type=float, default=0.8, help="each process's memory cap as a fraction of the weights' bytes"
    )
    ap.add_argument("--threads", type=int, default=2, help="torch threads of the reference run")
    ap.add_argument("--work", default="/tmp/ipg-large-model")
    ap.add_argument("--stage", choices=["build", "reference", "control", "capped"])
    ap.add_argument("--out")
    args = ap.parse_args()
    work = Path(args.work)
    model_dir, layer = work / "model", args.layers - 3
    weights = (
        json.loads((model_dir / "ipg-bench.json").read_text())["float32_bytes"]
        if (model_dir / "ipg-bench.json").is_file()
        else 0
    )
    cap_bytes = int(args.cap * weights)
    if args.stage == "build":
        return build(model_dir, args.layers)
    if args.stage == "reference":
        return reference(model_dir, layer, args.prompts, work, args.threads)
    if args.stage == "control":
        return control(model_dir, cap_bytes)
    if args.stage == "capped":
        return capped(model_dir, layer, args.prompts, work, cap_bytes)

    if not os.access(CGROUPS, os.W_OK):
        print(
            f"error: {CGROUPS} is not writable; this benchmark caps each process with a cgroup v1 memory group "
            "(run it as root on a machine with the cgroup v1 memory controller)",
            file=sys.stderr,
        )
        return 2
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    clear_cgroups()
    child("build", args)
    weights = json.loads((model_dir / "ipg-bench.json").read_text())["float32_bytes"]
    cap_bytes = int(args.cap * weights)
    print(f"weights {weights / 2**30:.2f} GiB in float32, cap {cap_bytes / 2**30:.2f} GiB per process", flush=True)
    child("reference", args)
    killed = child("control", args, check=False).returncode
    monitor = Monitor()
    monitor.start()
    child("capped", args)
    monitor.stop.set()
    monitor.join()
    time.sleep(2)  # the Ray processes exit
    clear_cgroups()
    import numpy as np
    import pyarrow.parquet as pq

    ref, run = pq.read_table(work / "reference.parquet"), pq.read_table(work / "capped.parquet")
    r, c = np.array(ref.column("score").to_pylist()), np.array(run.column("score").to_pylist())
    same_rows = all(
        ref.column(k).to_pylist() == run.column(k).to_pylist() for k in ("layer", "kind", "index", "n_prompts")
    )
    info = json.loads((work / "capped.json").read_text())
    names = {f"worker-{pid}": name for name, pid in info["pids"].items()}
    peaks = {"driver (+ the local cluster's raylet, GCS)": monitor.peaks.get("driver", 0)}
    peaks.update({name: monitor.peaks[f"worker-{pid}"] for name, pid in info["pids"].items()})
    peaks["largest other Ray worker (reducer, merge tasks)"] = max(
        (b for g, b in monitor.peaks.items() if g.startswith("worker-") and g not in names), default=0
    )
    ranks = [peaks[name] for name in info["pids"]]
    result = {
        **measured_on(),
        "model": {
            "shape": shape(args.layers),
            "params": sum(m["full_params"] for m in info["zero3"][:1]),
            "weights_gib": weights / 2**30,
        },
        "cap_gib": cap_bytes / 2**30,
        "cap_fraction": args.cap,
        "layer": layer,
        "prompts": args.prompts,
        "settings": SETTINGS,
        "control_load_under_cap_exit_code": killed,
        "peak_anon_gib": {k: v / 2**30 for k, v in peaks.items()},
        "largest_rank_peak_over_cap": max(ranks) / cap_bytes,
        "rank_params_gib": [m["local_bytes"] / 2**30 for m in info["zero3"]],
        "same_rows": same_rows,
        "max_abs_diff_over_max_abs_score": float(np.abs(r - c).max() / np.abs(r).max()),
        "reference_seconds": json.loads((work / "reference.json").read_text())["seconds"],
        "capped_seconds": info["seconds"],
        "capped_group_start_seconds": info["join_seconds"],
    }
    print(json.dumps(result, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    ok = (
        killed != 0
        and same_rows
        and result["max_abs_diff_over_max_abs_score"] < 1e-5
        and max(peaks.values()) < cap_bytes
    )
    print("OK" if ok else "FAILED: see above")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
