"""``ipg attribute``: one attribution of the support examples, on the same config tree as ``ipg run``.

Settings come from the run config (``--config FILE``, ``--preset``, dotted overrides such as
``--attribution.q=4`` or ``--ray.gradient_workers=2``), so every option of ``ipg run`` exists here under
the same name. A few flags are short names for keys of the tree:

    --model M       model.name=M (and model.saes={} unless --sae is given)
    --data FILE     data.support=FILE
    --layers L ...  attribution.layers=[L, ...]
    --limit N       data.n_support=N (the first N support examples)
    --sae FILE      model.saes: the SAE file under the layer it was trained on (repeatable)

The resolved config is written to ``OUT/config.yaml`` first; ``--resume OUT`` continues a killed Ray
attribution from it, exactly as ``ipg run --resume`` does. Outputs: scores.parquet and run.json.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import yaml

from ipg.driver.config import RunConfig, as_dict, load_config
from ipg.driver.run_inputs import load_saes, signal_params_of, support_examples
from ipg.errors import InputError

ALIASES = ("model", "data", "layers", "limit", "sae")


def add_arguments(p) -> None:
    p.add_argument("--config", help="YAML run config (default: the organism experiment's)")
    p.add_argument("--preset", help="named settings under the dotted overrides: paper")
    p.add_argument("--model", help="model.name: local path, .gguf file, hub id, or a named model")
    p.add_argument("--data", help="data.support: JSONL, Parquet or a dataset directory (organism: its support split)")
    p.add_argument("--layers", type=int, nargs="+", help="attribution.layers")
    p.add_argument("--limit", type=int, help="data.n_support: the first N support examples")
    p.add_argument(
        "--sae", action="append", help="an SAE for kind sae (repeatable): an ipg file or a SAELens directory"
    )
    p.add_argument("--out", help="output directory (required unless --resume)")
    p.add_argument("--run-id", help="the scores' run_id (default: the output directory's name, so --resume keeps it)")
    p.add_argument("--show", type=int, default=8, help="top components to print per layer")
    p.add_argument("--quiet", action="store_true")


def _overrides(args) -> list[str]:
    out = []
    if args.model:
        out.append(f"--model.name={json.dumps(args.model)}")
        if not args.sae:
            out.append("--model.saes={}")
    if args.sae:
        from ipg.sae import SAE

        saes = {int(SAE.header(path)["layer"]): str(path) for path in args.sae}
        if -1 in saes:
            raise InputError(
                f"--sae: '{saes[-1]}' names no hook (cfg.json metadata.hook_name); list it in a config's "
                "model.saes under the layer whose output it reads"
            )
        out.append(f"--model.saes={json.dumps(saes)}")
    if args.data:
        out.append(f"--data.support={json.dumps(args.data)}")
    if args.layers:
        out.append(f"--attribution.layers={json.dumps(args.layers)}")
    if args.limit is not None:
        out.append(f"--data.n_support={args.limit}")
    if args.ray:
        out.append("--ray.enabled=true")
    if args.address:
        out.append(f"--ray.address={json.dumps(args.address)}")
    return out + list(args.overrides)


def config_of(args) -> tuple[RunConfig, Path]:
    """The resolved config and the output directory (a resumed run: its saved config, flags over it)."""
    if args.resume:
        saved = Path(args.resume) / "config.yaml"
        if not saved.is_file():
            raise InputError(
                f"--resume: '{args.resume}' has no config.yaml; it is not the directory of an `ipg attribute` run"
            )
        if args.config or args.preset or args.out:
            raise InputError(
                "--config / --preset / --out: not with --resume (the attribution continues with the config "
                "saved in its directory)"
            )
        return load_config(str(saved), _overrides(args) + ["--ray.enabled=true"]), Path(args.resume)
    if not args.out:
        raise InputError("--out: required (the output directory), or --resume RUN_DIR")
    return load_config(args.config, _overrides(args), preset=args.preset), Path(args.out)


def attribute_command(args) -> None:
    from ipg.driver.run_dir import check_cluster, claim
    from ipg.signals import make_signal

    cfg, out = config_of(args)
    params = signal_params_of(cfg)
    make_signal(cfg.signal, **params)  # a user's signal: importable and constructible before data or model load
    examples = support_examples(cfg)
    check_cluster(cfg, bool(args.resume))
    with claim(out, "ipg attribute", resume=bool(args.resume), overwrite=args.overwrite):
        _attribute(args, cfg, out, params, examples)


def _attribute(args, cfg: RunConfig, out: Path, params: dict, examples: list[dict]) -> None:
    from ipg.files import atomic_write_json, atomic_write_text
    from ipg.prompts import format_examples
    from ipg.provenance import versions
    from ipg.scores import write_scores

    a = dataclasses.replace(cfg.attribution, seed=cfg.seeds[0])
    fmt = cfg.prompt.prompt_format()
    run_id = args.run_id or out.resolve().name
    log = (lambda m: print(m, file=sys.stderr)) if not args.quiet else (lambda m: None)
    on_ray = cfg.ray.active() or bool(args.resume)

    def save_config():  # the resume record (what `--resume OUT` repeats), once the inputs passed their checks
        if not args.resume:
            atomic_write_text(
                out / "config.yaml", yaml.safe_dump(json.loads(json.dumps(as_dict(cfg), default=list)), sort_keys=False)
            )

    if on_ray:
        from ipg.driver.orchestration.pipeline import attribute_on_ray
        from ipg.models import load_tokenizer, model_context

        # formatted here, once: the driver holds the tokenizer, never the weights
        tokenizer = load_tokenizer(cfg.model.name, trust_remote_code=cfg.model.trust_remote_code)
        skipped: dict[str, str] = {}
        examples = format_examples(
            tokenizer,
            examples,
            fmt,
            context=model_context(cfg.model.name, cfg.model.trust_remote_code),
            max_new_tokens=a.max_new_tokens,
            on_error=a.on_error,
            skipped=skipped,
        )
        save_config()
        note = fmt.note(tokenizer, examples)
        if note:
            log(note)
        res = attribute_on_ray(
            cfg.model,
            examples,
            a,
            signal=cfg.signal,
            signal_params=params,
            out_dir=out,
            ray_cfg=cfg.ray,
            run_id=run_id,
            resume=bool(args.resume),
            log=log,
        )
        res.diagnostics["skipped"] = {**skipped, **res.diagnostics.get("skipped", {})}
        prompt = fmt.describe(tokenizer, examples=examples)
        fingerprint = res.table.column("model")[0].as_py() if res.table.num_rows else cfg.model.name
    else:
        from ipg.attribution import attribute
        from ipg.models import load_model, model_fingerprint

        m = cfg.model
        model, tokenizer = load_model(m.name, dtype=m.dtype, device=m.device, trust_remote_code=m.trust_remote_code)
        res = attribute(
            model,
            tokenizer,
            examples,
            signal=cfg.signal,
            signal_params=params,
            saes=load_saes(cfg),
            run_id=run_id,
            log=log,
            prompt_format=fmt,
            **dataclasses.asdict(a),
        )
        prompt = res.diagnostics["prompt_format"]
        save_config()
        write_scores(out / "scores.parquet", res.table)
        fingerprint = model_fingerprint(model)
    run = {
        "run_id": run_id,
        "command": "attribute",
        "model": fingerprint,
        "signal": cfg.signal,
        "signal_params": params,
        "data": cfg.data.support or "organism support split",
        "ray": on_ray,
        "prompt": prompt,
        "answers": cfg.answers.extractor().describe() if cfg.signal == "accuracy" else None,
        "n_examples": len(examples),
        "config": as_dict(cfg),
        "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(res.config).items()},
        "saes": dict(cfg.model.saes),
        "diagnostics": res.diagnostics,
        "versions": versions(),
    }
    atomic_write_json(out / "run.json", run)
    print_summary(res, out, len(examples), args.show)


def print_summary(res, out: Path, n_examples: int, show: int) -> None:
    from ipg.scores import select

    d = res.diagnostics
    print(f"wrote {out / 'scores.parquet'} ({res.table.num_rows} components) and {out / 'run.json'}")
    print(
        f"{d['seconds_per_prompt']:.3f} s per prompt; mean reward {d['mean_reward']:.3f}; "
        f"{d['mixed_groups']}/{d['n_prompts']} groups with varying rewards"
    )
    if d.get("skipped"):
        print(
            f"skipped {len(d['skipped'])}/{n_examples} examples, refused or their signal failing (on_error skip): "
            + ", ".join(list(d["skipped"])[:5])
        )
    rows = res.table.to_pydict()
    kind = res.config.kind
    for layer in res.config.layers:
        s = d["sites"][f"layers.{layer}.{kind}"]
        n = sum(1 for l_, k in zip(rows["layer"], rows["kind"]) if l_ == layer and k == kind)
        top = select(res.table, min(show, n), layer=layer, kind=kind)
        scores = {
            i: sc
            for i, sc, l_, k in zip(rows["index"], rows["score"], rows["layer"], rows["kind"])
            if l_ == layer and k == kind
        }
        gap = (
            f"; J(0) {s['J_alpha0']:.3f} J({s['alpha_min']:.3g}) {s['J_alpha_min']:.3f} J(1) {s['J_alpha1']:.3f}"
            if "J_alpha0" in s
            else ""
        )
        print(f"layers.{layer}.{kind}: sum of scores {s['sum_scores']:.4f}{gap}")
        print("  top: " + ", ".join(f"{c.index} ({scores[c.index]:+.4f})" for c in top))
