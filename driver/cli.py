"""The ``ipg`` command line.

    ipg organism data  [--out DIR]          deterministic support / eval splits as JSONL
    ipg organism train [--out DIR]          reproduce the shipped checkpoint (fixed seed, ~10 min on 2 cores)
    ipg organism eval  [--model M] [--json] greedy accuracy, sampled disagreement, length on the eval split
    ipg eval --model M --data FILE          accuracy@1 and mean length of any HF causal LM on a dataset
    ipg models [build NAME]                 the named models; build one into the cache ahead of use
    ipg attribute [--config FILE] [--model M] [--layers L..] --out DIR [--section.key=value ...]
                                            one attribution: scores.parquet + run.json (the run's config tree)
    ipg attribute ... --ray [--address A] | --resume DIR         the same on a Ray cluster (local by default)
    ipg sae train --model M --layer L --out FILE                 a TopK SAE on a block's outputs
    ipg run [--config FILE] [--section.key=value ...]            attribute, steer, evaluate, report
    ipg run --ray [--address A] | --resume RUN_DIR               attribution on Ray; continue a killed run
    ipg report RUN_DIR                                           rebuild report.md and plots from Parquet

Bad input (files, model paths, values) prints one ``error:`` line naming the field and exits with 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ipg.driver import attribute_command
from ipg.driver.strength_config import StudyConfig
from ipg.errors import InputError


def _organism_data(args) -> None:
    from ipg.data import write_jsonl
    from ipg.organism.card import splits

    for name, examples in splits(args.seed, args.n_support, args.n_eval).items():
        path = write_jsonl(Path(args.out) / f"{name}.jsonl", examples)
        print(f"wrote {len(examples)} examples to {path}")


def _organism_train(args) -> None:
    from ipg.models import load_model
    from ipg.organism.card import evaluate_organism, write_card
    from ipg.organism.train import TrainConfig, train

    out = train(Path(args.out), TrainConfig(seed=args.seed, steps=args.steps))
    model, tokenizer = load_model(str(out))
    result = evaluate_organism(model, tokenizer)
    print(result.table())
    print(f"model card: {write_card(out, result)}")


def _organism_eval(args) -> None:
    from ipg.data import load_examples
    from ipg.models import load_model
    from ipg.organism.card import evaluate_organism

    model, tokenizer = load_model(args.model)
    examples = load_examples(args.data, required=("prompt", "answer")) if args.data else None
    result = evaluate_organism(model, tokenizer, examples)
    print(json.dumps(result.as_dict(), indent=2) if args.json else result.table())


def _eval(args) -> None:
    from ipg.data import load_examples, write_jsonl
    from ipg.evaluation import format_table, summarise
    from ipg.generation import SamplingParams, generate
    from ipg.models import load_model, model_context
    from ipg.prompts import format_examples

    params = SamplingParams(
        n=args.n,
        greedy=args.temperature == 0,
        temperature=args.temperature or 1.0,
        top_p=args.top_p,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
    )
    fmt, extractor = _prompt_format(args), _extractor(args)
    examples = load_examples(
        args.data, required=("prompt", "answer"), fields=_fields(args), reference=args.reference, split=args.split
    )[: args.limit]
    model, tokenizer = load_model(
        args.model, dtype=args.dtype, device=args.device, trust_remote_code=args.trust_remote_code
    )
    examples = format_examples(
        tokenizer, examples, fmt, context=model_context(model), max_new_tokens=args.max_new_tokens
    )
    note = fmt.note(tokenizer, examples)
    if note:
        print(note, file=sys.stderr)
    samples = generate(model, tokenizer, examples, params, batch_size=args.batch_size)
    summary = summarise(examples, samples, (), extractor)
    setup = {"prompt": fmt.describe(tokenizer, examples=examples), "answers": extractor.describe()}
    if args.completions:  # every completion with what was read from it: for checking the scoring by hand
        from ipg.answers import answers_match

        rows = [
            {
                "id": ex["id"],
                "sample": s.sample_index,
                "prompt": ex["prompt"],
                "answer": ex["answer"],
                "completion": s.text,
                "extracted": a,
                "correct": answers_match(a, str(ex["answer"])),
            }
            for ex, group in zip(examples, samples)
            for s in group
            for a in [extractor.extract(s.text)]
        ]
        write_jsonl(args.completions, rows)
    if args.json:
        print(json.dumps({**summary.as_dict(), **setup}, indent=2))
        return
    print(format_table({args.model: summary}))
    print(
        f"prompt format '{fmt.format}' (resolved: {setup['prompt']['resolved']}); answers from "
        f"{', '.join(extractor.formats)}" + (f" after the pattern {extractor.pattern!r}" if extractor.pattern else "")
    )
    if args.completions:
        print(f"wrote {args.completions}")


def _fields(args) -> dict:
    out = {}
    for pair in args.field or []:
        key, sep, column = pair.partition("=")
        if not sep or not column:
            raise InputError(f"--field: '{pair}' must be KEY=COLUMN, e.g. --field prompt=question")
        out[key] = column
    from ipg.data import check_fields

    return check_fields(out, "--field")


def _prompt_format(args):
    from ipg.prompts import PromptFormat

    return PromptFormat(args.prompt_format, args.system_prompt)


def _extractor(args):
    from ipg.answers import DEFAULT_FORMATS, Extractor

    return Extractor(tuple(args.answer_format or DEFAULT_FORMATS), args.answer_pattern)


def _input_flags(p) -> None:
    """How a file's records become the model's inputs and how answers are read (``ipg eval``; ``ipg run`` and
    ``ipg attribute`` set these in the config tree: data.fields, data.reference, prompt.*, answers.*)."""
    p.add_argument(
        "--field",
        action="append",
        metavar="KEY=COLUMN",
        help="which column is the example's prompt, answer or id (repeatable): --field prompt=question",
    )
    p.add_argument(
        "--reference",
        default="auto",
        help="how references are read: auto | gsm8k ('#### 72') | math (last \\boxed{}) | plain",
    )
    p.add_argument("--split", help="the split of a Hugging Face dataset directory (save_to_disk) holding several")
    p.add_argument(
        "--prompt-format",
        default="auto",
        help="auto (chat when the model has a chat template, else raw) | chat | raw | a template over the "
        "example's fields: 'Question: {question}\\nAnswer:'",
    )
    p.add_argument("--system-prompt", help="system message of the chat format")
    p.add_argument(
        "--answer-format",
        nargs="+",
        metavar="FORMAT",
        help="answer formats in order of precedence: hash boxed answer_is last_number (default: hash boxed answer_is)",
    )
    p.add_argument(
        "--answer-pattern", metavar="REGEX", help="a regex tried before the formats; its group is the answer"
    )


def _sae_train(args) -> None:
    import random

    from ipg.files import atomic_write_json
    from ipg.models import load_model, model_fingerprint
    from ipg.named_saes import RECIPES, fit_path, named_sae_path
    from ipg.organism import task
    from ipg.organism.card import splits
    from ipg.sae import collect_activations, train_sae

    if args.out is None:  # the named SAE of this model and layer, into the cache (as a run's first use does)
        if args.model not in RECIPES:
            raise InputError(
                f"--out: required for model '{args.model}' (named SAEs, built into the cache without "
                f"--out, exist for {', '.join(RECIPES)})"
            )
        path = named_sae_path(f"{args.model}:layer{args.layer}", args.model, args.layer)
        print(f"{path}: {json.loads(fit_path(path).read_text())}")
        return
    model, tokenizer = load_model(args.model, dtype="float32", device=args.device)
    if args.data:
        from ipg.data import load_examples

        examples = load_examples(args.data)[: args.prompts]
    elif args.model == "organism":  # fresh teacher prompts, never the support/eval splits
        held = {ex["prompt"] for split in splits().values() for ex in split}
        rng, examples = random.Random(f"sae-{args.seed}"), []
        while len(examples) < args.prompts:
            p = task.sample_problem(rng)
            if p.prompt not in held:
                examples.append(task.to_example(p))
                held.add(p.prompt)
    elif args.model in RECIPES:  # fresh word problems of the model's recipe, never the shipped splits
        from ipg.prompts import format_examples
        from ipg.word_problems import fresh

        examples = format_examples(
            tokenizer,
            [
                {"id": f"sae-{i}", "prompt": r["question"]}
                for i, r in enumerate(fresh(RECIPES[args.model].level, args.prompts, args.seed))
            ],
        )
    else:
        raise InputError("--data: required unless --model is 'organism' or a named model")
    from ipg.components import Site, check_site

    check_site(model, Site(args.layer, "residual"))
    acts = collect_activations(
        model,
        tokenizer,
        examples,
        args.layer,
        n_samples=args.samples,
        seed=args.seed,
        max_new_tokens=args.max_new_tokens,
        skip_first=args.model != "organism",
        log=print,
    )
    sae, stats = train_sae(
        acts, args.features, args.k, steps=args.steps, seed=args.seed, layer=args.layer, model=model_fingerprint(model)
    )
    fit = {"layer": args.layer, "model": model_fingerprint(model), **stats}
    if args.format == "sae_lens":
        from ipg.sae_lens import export

        path = export(sae, args.out)
        atomic_write_json(Path(args.out) / "ipg_fit.json", fit)
    else:
        atomic_write_json(fit_path(args.out), fit)
        path = sae.save(args.out)
    print(f"wrote {path}: {stats}")


def _sae_export(args) -> None:
    from ipg.sae import SAE
    from ipg.sae_lens import export

    path = export(SAE.load(args.sae), args.out)
    print(f"wrote {path} (SAELens layout: cfg.json, sae_weights.safetensors)")


def _run(args) -> None:
    from ipg.driver.config import load_config
    from ipg.driver.experiment import run_experiment
    from ipg.driver.run_dir import check_cluster, claim

    overrides = list(args.overrides)
    if args.out:
        if args.resume:
            raise InputError("--out: not with --resume (the run continues in RUN_DIR)")
        overrides.append(f"--out={json.dumps(args.out)}")
    if args.ray:
        overrides.append("--ray.enabled=true")
    if args.address:
        overrides.append(f"--ray.address={json.dumps(args.address)}")
    if args.resume:  # the run's own resolved config; flags may still change how it runs (ray.*)
        saved = Path(args.resume) / "config.yaml"
        if not saved.is_file():
            raise InputError(f"--resume: '{args.resume}' has no config.yaml; it is not the directory of an `ipg run`")
        if args.config or args.preset:
            raise InputError(
                f"--{'config' if args.config else 'preset'}: not with --resume (the run continues with the "
                "config saved in its directory)"
            )
        cfg = load_config(str(saved), overrides + [f"--out={json.dumps(args.resume)}"])
    else:
        cfg = load_config(args.config, overrides, preset=args.preset)
    check_cluster(cfg, bool(args.resume))
    with claim(cfg.out, "ipg run", resume=bool(args.resume), overwrite=args.overwrite):
        out = run_experiment(cfg, resume=bool(args.resume))
    print(f"report: {out / 'report.md'}")


def _study(args) -> None:
    from ipg.driver.run_dir import claim
    from ipg.driver.strength_study import run_study

    defaults = StudyConfig()
    cfg = StudyConfig(
        config=args.config,
        out=args.out,
        seeds=tuple(args.seeds or defaults.seeds),
        dev_seeds=tuple(args.dev_seeds or (args.seeds or defaults.seeds)[:1]),
        n_support=args.n_support,
        n_dev=args.n_dev,
        n_test=args.n_test,
        p=args.p,
        heads=args.heads,
        candidates=tuple(args.candidates or defaults.candidates),
        interventions=tuple(args.interventions or defaults.interventions),
        gammas=tuple(args.gammas or defaults.gammas),
        max_new_tokens=args.max_new_tokens,
        threads=args.threads,
    )
    with claim(cfg.out, "ipg study strength", resume=False, overwrite=args.overwrite):
        out = run_study(cfg)
    print(f"results: {out / 'study.md'}")


def _sweep(args) -> None:
    from ipg.driver.sweep import SweepFailed, run_sweep

    try:
        run_sweep(
            args.spec,
            out=args.out,
            ray=args.ray,
            address=args.address,
            work=args.work,
            overrides=args.overrides,
            pushgateway=args.pushgateway,
        )
    except SweepFailed as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


def _models(args) -> None:
    from ipg.catalog import NAMED, ORGANISM, ORGANISM_PATH, models_dir
    from ipg.models import resolve_model_path

    if args.action == "build":
        if args.name not in NAMED:
            raise InputError(f"models build: unknown '{args.name}'; named models built on first use: {sorted(NAMED)}")
        print(f"{args.name}: {resolve_model_path(args.name)}")
        return
    print(f"{ORGANISM}: {ORGANISM_PATH} (shipped)")
    for name, spec in NAMED.items():
        path = models_dir() / name
        state = "built" if (path / "config.json").is_file() else "built on first use"
        print(f"{name}: {path} ({state}; {spec.description})")


def _report(args) -> None:
    from ipg.driver.report.write import write_report

    print(f"wrote {write_report(args.run_dir)}")


def _ray_flags(p) -> None:
    p.add_argument(
        "--ray", action="store_true", help="run attribution on Ray (default when RAY_ADDRESS or --address is set)"
    )
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local cluster on 127.0.0.1)")
    p.add_argument(
        "--resume", metavar="RUN_DIR", help="continue a killed Ray run in RUN_DIR, skipping the shards in its ledger"
    )
    p.add_argument("--overwrite", action="store_true", help="replace the run already in the output directory")


def named_choices() -> str:
    """The named choices of the settings, read from their registries: the help's epilog."""
    from ipg.advantages import ADVANTAGES
    from ipg.driver.selections import ACCURACY_BASELINES, CONTROL_METHODS
    from ipg.interventions import DEFAULT as DEFAULT_INTERVENTION
    from ipg.interventions import INTERVENTIONS
    from ipg.methods import DEFAULT, METHODS
    from ipg.paths import BASELINES, SCHEDULES
    from ipg.signals import signal_names
    from ipg.workers.backends import GRADIENT_BACKENDS, ROLLOUT_BACKENDS

    rows = [
        ("--attribution.method", list(METHODS), f"default {DEFAULT}"),
        ("--attribution.schedule", list(SCHEDULES), "ipg only"),
        ("--attribution.baseline", list(BASELINES), ""),
        ("--attribution.advantage", list(ADVANTAGES), ""),
        ("--baselines.methods", list(ACCURACY_BASELINES), "a list"),
        ("--length.methods", list(CONTROL_METHODS), "a list"),
        ("--length.intervention", list(INTERVENTIONS), f"default {DEFAULT_INTERVENTION}; also --reflection."),
        ("--signal", signal_names(), "or package.module:function"),
        ("--ray.rollout_backend", list(ROLLOUT_BACKENDS), ""),
        ("--ray.gradient_backend", list(GRADIENT_BACKENDS), ""),
    ]
    return "named choices:\n" + "\n".join(
        f"  {flag:24} {' | '.join(names)}" + (f"  ({note})" if note else "") for flag, names, note in rows
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ipg",
        description="Integrated Policy Gradient: attribute and steer LLM reasoning. "
        "A failure ends in one `error:` line; --debug (anywhere) prints its traceback.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    organism = sub.add_parser("organism", help="the bundled model organism").add_subparsers(
        dest="action", required=True
    )
    p = organism.add_parser("data", help="write support.jsonl and eval.jsonl")
    p.add_argument("--out", default="data/organism")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-support", type=int, default=256)
    p.add_argument("--n-eval", type=int, default=500)
    p.set_defaults(run=_organism_data)
    p = organism.add_parser("train", help="train the organism from a fixed seed and write its model card")
    p.add_argument("--out", default="runs/organism-checkpoint")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=1800)
    p.set_defaults(run=_organism_train)
    p = organism.add_parser("eval", help="greedy accuracy, sampled disagreement and length on the eval split")
    p.add_argument("--model", default="organism", help="checkpoint directory (default: the shipped organism)")
    p.add_argument("--data", help="JSONL of examples with prompt and answer (default: the organism eval split)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(run=_organism_eval)

    p = sub.add_parser(
        "attribute",
        help="one attribution of the support examples: scores.parquet and run.json in --out; "
        "the settings of `ipg run` (--config, --preset, dotted overrides)",
        epilog=named_choices(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    attribute_command.add_arguments(p)
    _ray_flags(p)
    p.set_defaults(run=attribute_command.attribute_command, overrides=[])

    p = sub.add_parser(
        "run",
        help="attribute, steer and evaluate against baselines; writes a report",
        epilog=named_choices(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", help="YAML run config (default: the organism experiment)")
    p.add_argument(
        "--preset",
        help="named settings over the config, under the dotted overrides: paper (the paper's attribution exactly)",
    )
    p.add_argument("--out", help="output directory (the config's 'out' otherwise)")
    _ray_flags(p)
    p.set_defaults(run=_run, overrides=[])
    p = sub.add_parser(
        "sweep",
        help="models x signals x layers x kinds x methods: one attribution (and steering "
        "evaluation) a cell, into a Parquet dataset; a rerun skips finished cells",
    )
    p.add_argument("--spec", required=True, help="sweep spec YAML (deploy/sweeps/*.yaml)")
    p.add_argument("--out", help="local path or URI (s3://, gs://, ...) for the results (the spec's 'out' otherwise)")
    p.add_argument(
        "--ray", action="store_true", help="run the cells on Ray (default when RAY_ADDRESS or --address is set)"
    )
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local cluster on 127.0.0.1)")
    work = "local directory for the cells' resumable state (default: OUT/work, or ~/.cache/ipg/sweeps/NAME for a URI)"
    p.add_argument("--work", help=work)
    p.add_argument(
        "--pushgateway",
        metavar="HOST:PORT",
        help="push the sweep's outcome to this Prometheus Pushgateway "
        "when it ends (replaces the spec's pushgateway.address)",
    )
    p.set_defaults(run=_sweep, overrides=[])
    study = sub.add_parser("study", help="studies that choose a default by a rule fixed in advance").add_subparsers(
        dest="study", required=True
    )
    p = study.add_parser(
        "strength",
        help="reasoning strength: candidate selections, sites and interventions on development prompts, "
        "the default chosen by a fixed rule, checked on test prompts (docs/results/reasoning-strength.md)",
    )
    d = StudyConfig()
    p.add_argument("--config", default=d.config, help="the run config giving model, data, prompt and answers")
    p.add_argument("--out", default=d.out)
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    p.add_argument("--seeds", type=int, nargs="+", help=f"seeds of the test prompts (default {list(d.seeds)})")
    p.add_argument("--dev-seeds", type=int, nargs="+", help="seeds of the development prompts (default: the first)")
    p.add_argument("--n-support", type=int, default=d.n_support, help="support prompts per seed")
    p.add_argument("--n-dev", type=int, default=d.n_dev, help="eval prompts that choose")
    p.add_argument("--n-test", type=int, default=d.n_test, help="the next eval prompts, which report")
    p.add_argument("--p", type=int, default=d.p, help="components per selection")
    p.add_argument("--heads", type=int, default=d.heads, help="attention heads per SITE:heads selection")
    p.add_argument(
        "--candidates",
        nargs="+",
        help=f"SITE:top|abs|heads selections, the first the shipped default (default {list(d.candidates)})",
    )
    p.add_argument("--interventions", nargs="+", help=f"default {list(d.interventions)}")
    p.add_argument("--gammas", type=float, nargs="+", help=f"default {list(d.gammas)} (1 is the unsteered model)")
    p.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens)
    p.add_argument("--threads", type=int, default=d.threads, help="torch threads")
    p.set_defaults(run=_study)
    p = sub.add_parser("models", help="the named models (organism, smollm2-135m-instruct) and where they are cached")
    p.add_argument("action", nargs="?", choices=["list", "build"], default="list")
    p.add_argument("name", nargs="?", help="the named model to build (download, check, convert) now")
    p.set_defaults(run=_models)
    p = sub.add_parser("report", help="rebuild report.md and plots of a run directory from its Parquet files")
    p.add_argument("run_dir")
    p.set_defaults(run=_report)

    sae = sub.add_parser("sae", help="sparse autoencoders").add_subparsers(dest="action", required=True)
    p = sae.add_parser("train", help="train a TopK SAE on a block's outputs over sampled completions")
    p.add_argument("--model", default="organism")
    p.add_argument("--data", help="prompts (default for the organism: fresh task prompts)")
    p.add_argument("--layer", type=int, required=True)
    p.add_argument("--features", type=int, default=512)
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--prompts", type=int, default=600)
    p.add_argument("--samples", type=int, default=4, help="samples per prompt")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-new-tokens", type=int, default=128, help="tokens sampled per completion")
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--out",
        help="the SAE file (or directory, --format sae_lens); without it, a named model's SAE of "
        "this layer is built into the cache by its fixed recipe, as a run's first use does",
    )
    p.add_argument(
        "--format",
        choices=["ipg", "sae_lens"],
        default="ipg",
        help="ipg: one safetensors file; sae_lens: a SAELens directory (cfg.json, sae_weights.safetensors)",
    )
    p.set_defaults(run=_sae_train)
    p = sae.add_parser("export", help="write an SAE (ipg file or SAELens directory) as a SAELens directory")
    p.add_argument("sae", help="an ipg SAE file (or a SAELens directory)")
    p.add_argument("out", help="the directory to write: cfg.json and sae_weights.safetensors")
    p.set_defaults(run=_sae_export)

    p = sub.add_parser(
        "eval", help="accuracy@1 and mean length of a causal LM on a JSONL/Parquet file or dataset directory"
    )
    p.add_argument(
        "--model",
        required=True,
        help="local path, .gguf file, Hugging Face hub id, or a named model (organism, smollm2-135m-instruct)",
    )
    p.add_argument("--data", required=True, help="examples with a prompt and an answer (see --field)")
    p.add_argument("--limit", type=int, help="only the first N examples")
    p.add_argument(
        "--completions", metavar="FILE", help="write every completion, its extracted answer and verdict (JSONL)"
    )
    _input_flags(p)
    p.add_argument("--n", type=int, default=1, help="samples per prompt")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--trust-remote-code", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=_eval)
    return parser


def main(argv: list[str] | None = None) -> int:
    for stream in (sys.stdout, sys.stderr):  # a job log (a pipe or a file) gets each progress line as it is written
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(line_buffering=True)
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv  # anywhere on the line: tracebacks on the terminal
    argv = [a for a in argv if a != "--debug"]
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # `ipg run`, `ipg attribute` and `ipg sweep` take config overrides such as --attribution.q=4
        if args.command not in ("run", "attribute", "sweep") or not all(x.startswith("--") and "=" in x for x in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = extra
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # per-shard "Loading weights" bars drown the run's own output
    try:
        args.run(args)
    except (Exception, KeyboardInterrupt) as e:
        from ipg.driver.failures import report_failure

        return report_failure(e, getattr(args, "resume", None) or getattr(args, "out", None), debug)
    return 0


if __name__ == "__main__":
    sys.exit(main())
