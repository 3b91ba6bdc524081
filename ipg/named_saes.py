"""Named SAEs: ``MODEL:layerL`` in ``model.saes``, built on first use and cached, like the named models.

``organism:layer2`` ships inside the package. For a named real model (``smollm2-135m-instruct``) a TopK
SAE is trained at first use by a fixed recipe (``RECIPES``): sampled step-by-step traces of fresh word
problems (``ipg.word_problems.fresh``, never the support or eval prompts), the block's output at every
position, ``ipg.sae.train_sae``. The file lands in ``$IPG_CACHE/saes/MODEL/`` under a name that carries the
recipe's hash, with its fit (fraction of variance unexplained on held-out activations, dead features)
beside it in a JSON file; builders wait on one lock, and a killed build leaves no file behind.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from ipg.errors import InputError


@dataclass(frozen=True)
class SAERecipe:
    """How a named model's SAE is trained: the data, its size, the optimiser."""

    level: str = "easy"  # word problems (ipg.word_problems)
    prompts: int = 96
    samples: int = 2  # sampled traces per prompt, temperature 1
    max_new_tokens: int = 160
    features: int = 1152  # 2x the residual width of SmolLM2-135M: sized to train in minutes on 2 CPU cores
    k: int = 32
    steps: int = 1500
    batch_size: int = 512
    lr: float = 1e-3
    seed: int = 0
    skip_first: bool = True  # the attention sink's first position and repeated system-prompt rows left out

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(dataclasses.asdict(self), sort_keys=True).encode()).hexdigest()[:10]


RECIPES: dict[str, SAERecipe] = {"smollm2-135m-instruct": SAERecipe()}


def is_named(spec: str) -> bool:
    """'MODEL:layerL' of a named model (``organism:NAME`` files ship with the package instead)."""
    model, sep, rest = spec.partition(":")
    return bool(sep) and model in RECIPES and rest.startswith("layer")


def named_sae_path(spec: str, model: str, layer: int, log=None) -> Path:
    """The cached SAE file of ``spec`` ('smollm2-135m-instruct:layer22'), trained first if missing."""
    name, _, rest = spec.partition(":")
    where = f"model.saes.{layer}"
    if name != model:
        raise InputError(
            f"{where}: '{spec}' belongs to model '{name}', not '{model}'; give an SAE of this model or {{}}"
        )
    try:
        trained_on = int(rest[len("layer") :])
    except ValueError:
        raise InputError(f"{where}: '{spec}': expected '{name}:layerL' with L a block index") from None
    if trained_on != layer:
        raise InputError(f"{where}: '{spec}' is the SAE of layer {trained_on}; list it under {trained_on}")
    recipe = RECIPES[name]
    from ipg.catalog import cache_root, locked

    root = cache_root() / "saes" / name
    target = root / f"layer{layer}-{recipe.digest()}.safetensors"
    if target.is_file():
        return target
    with locked(target.name, root):
        if not target.is_file():
            build(name, layer, recipe, target, log or (lambda m: print(f"ipg: {m}", file=sys.stderr, flush=True)))
    return target


def build(model_name: str, layer: int, recipe: SAERecipe, target: Path, log) -> dict:
    """Train the SAE of ``recipe`` at ``layer`` and write it (and its fit statistics) to ``target``."""
    from ipg.components import Site, check_site
    from ipg.files import atomic_write_json
    from ipg.models import load_model, model_fingerprint
    from ipg.prompts import PromptFormat, format_examples
    from ipg.sae import collect_activations, train_sae
    from ipg.word_problems import fresh

    log(f"SAE '{model_name}:layer{layer}' is not in {target.parent}; training it (once) by its recipe {recipe}")
    model, tokenizer = load_model(model_name, dtype="float32", device="cpu")
    check_site(model, Site(layer, "residual"))
    examples = [
        {"id": f"sae-{i}", "prompt": r["question"], "answer": r["answer"]}
        for i, r in enumerate(fresh(recipe.level, recipe.prompts, recipe.seed))
    ]
    examples = format_examples(tokenizer, examples, PromptFormat(), max_new_tokens=recipe.max_new_tokens)
    acts = collect_activations(
        model,
        tokenizer,
        examples,
        layer,
        n_samples=recipe.samples,
        max_new_tokens=recipe.max_new_tokens,
        seed=recipe.seed,
        skip_first=recipe.skip_first,
        log=log,
    )
    sae, stats = train_sae(
        acts,
        recipe.features,
        recipe.k,
        steps=recipe.steps,
        batch_size=recipe.batch_size,
        lr=recipe.lr,
        seed=recipe.seed,
        layer=layer,
        model=model_fingerprint(model),
        log=log,
    )
    stats = {
        "name": f"{model_name}:layer{layer}",
        "layer": layer,
        "model": model_fingerprint(model),
        "recipe": dataclasses.asdict(recipe),
        **stats,
    }
    atomic_write_json(fit_path(target), stats)  # first: a file without its statistics is never there
    sae.save(target)
    log(
        f"wrote {target}: fraction of variance unexplained {stats['fvu']:.3f}, "
        f"{stats['dead_features']} of {recipe.features} features dead"
    )
    return stats


def fit_path(sae_file: str | Path) -> Path:
    """The JSON file of an SAE's fit statistics (written by ``ipg sae train`` and named builds)."""
    return Path(sae_file).with_suffix(".json")


def fit_of(sae_file: str | Path) -> dict | None:
    path = fit_path(sae_file)
    return json.loads(path.read_text()) if path.is_file() else None
