"""What a run reads before it starts: its examples (support, eval, validation), its SAEs, and its
signal's parameters; shared by ``ipg run``, ``ipg attribute`` and ``ipg sweep``."""

from __future__ import annotations

from ipg.data import load_examples
from ipg.driver.config import RunConfig, sae_path
from ipg.errors import InputError
from ipg.models import ORGANISM
from ipg.sae import SAE
from ipg.signals import example_fields


def load_saes(cfg: RunConfig, load: bool = True) -> dict[int, SAE | str]:
    """The run's SAEs by layer, each checked to be trained on its layer; ``load`` False checks the files'
    headers only (on Ray the actors load them) and gives their paths."""
    out = {}
    for layer, path in cfg.model.saes.items():
        path = sae_path(path, cfg.model.name, layer)
        trained_on = int(SAE.header(path)["layer"])
        if trained_on not in (layer, -1):  # -1: a SAELens config that names no hook; listed under its layer
            raise InputError(f"model.saes.{layer}: '{path}' was trained on layer {trained_on}, not {layer}")
        if load:
            sae = SAE.load(path)
            sae.layer = layer
            out[layer] = sae
        else:
            out[layer] = path
    return out


def splits_of(cfg: RunConfig, with_validation: bool = False) -> tuple[list[dict], ...]:
    """Support and eval examples; with ``with_validation`` also the validation prompts: the
    ``data.n_validation`` eval-file prompts after the first ``data.n_eval`` (disjoint from both)."""
    from ipg.organism.card import splits

    default = splits() if cfg.model.name == ORGANISM else None
    if (cfg.data.support is None or cfg.data.eval is None) and default is None:
        raise InputError("data.support / data.eval: required unless model.name is 'organism'")
    need = example_fields(cfg.signal, cfg.signal_params)
    d = cfg.data
    support = (
        load_examples(d.support, need, fields=d.fields, reference=d.reference, split=d.support_split)
        if d.support
        else default["support"]
    )
    evaluation = (
        load_examples(d.eval, ("prompt", "answer"), fields=d.fields, reference=d.reference, split=d.eval_split)
        if d.eval
        else default["eval"]
    )
    held_out = evaluation[: cfg.data.n_eval + (cfg.data.n_validation if with_validation else 0)]
    overlap = {e["prompt"] for e in support} & {e["prompt"] for e in held_out}
    if overlap:
        raise InputError(
            f"data: {len(overlap)} eval prompts also occur in the support set; the eval split must be held out"
        )
    if with_validation:
        return support, held_out[: cfg.data.n_eval], held_out[cfg.data.n_eval :]
    return support, held_out


def support_examples(cfg: RunConfig) -> list[dict]:
    """The first ``data.n_support`` examples of the support data (the organism's support split by default)."""
    d = cfg.data
    if d.support:
        examples = load_examples(
            d.support,
            example_fields(cfg.signal, signal_params_of(cfg)),
            fields=d.fields,
            reference=d.reference,
            split=d.support_split,
        )
    elif cfg.model.name == ORGANISM:
        from ipg.organism.card import splits

        examples = splits()["support"]
    else:
        raise InputError(
            "data.support: required unless model.name is 'organism' (whose support split is the default); "
            "give --data FILE"
        )
    return examples[: d.n_support]


def signal_params_of(cfg: RunConfig, signal: str | None = None, params: dict | None = None) -> dict:
    """A signal's parameters (the config's, for its own signal); the accuracy signal also gets the run's
    answer extractor."""
    signal = signal or cfg.signal
    params = dict(cfg.signal_params if signal == cfg.signal and params is None else params or {})
    if signal == "accuracy":
        extractor = cfg.answers.extractor()
        params.setdefault("formats", list(extractor.formats))
        params.setdefault("pattern", extractor.pattern)
    return params
