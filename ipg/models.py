"""Load a frozen Hugging Face causal LM and its tokenizer from a local path, a hub id, or ``organism``.

Weights are frozen (``requires_grad=False``): attribution takes gradients with respect to activations
only. ``trust_remote_code`` stays off unless the caller asks for it.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ipg.errors import InputError

ORGANISM = "organism"
ORGANISM_PATH = Path(__file__).resolve().parent / "organism" / "checkpoint"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_model_path(name_or_path: str) -> str:
    """``organism`` -> the shipped checkpoint; a local directory is checked; anything else is a hub id."""
    if name_or_path == ORGANISM:
        return str(ORGANISM_PATH)
    path = Path(os.path.expanduser(name_or_path))
    looks_local = path.exists() or name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1
    if looks_local:
        if not path.is_dir():
            raise InputError(
                f"model: path '{name_or_path}' does not exist or is not a directory; pass a directory "
                "holding config.json and weights, a Hugging Face hub id, or 'organism'"
            )
        if not (path / "config.json").is_file():
            raise InputError(f"model: '{name_or_path}' has no config.json; it is not a Hugging Face model directory")
    return str(path) if looks_local else name_or_path


def load_model(
    name_or_path: str = ORGANISM,
    *,
    dtype: str = "float32",
    device: str = "cpu",
    trust_remote_code: bool = False,
    revision: str | None = None,
):
    """Return ``(model, tokenizer)``: the model in eval mode with frozen weights on ``device``; the
    tokenizer padding on the left (batched generation) with a pad token (EOS when the model has none)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if dtype not in DTYPES:
        raise InputError(f"model.dtype: '{dtype}' is not supported; use one of {sorted(DTYPES)}")
    source = resolve_model_path(name_or_path)
    kwargs = {"trust_remote_code": trust_remote_code, "revision": revision}
    try:
        config = AutoConfig.from_pretrained(source, **kwargs)  # first and cheapest: one network round if remote
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(source, config=config, dtype=DTYPES[dtype], **kwargs)
    except (OSError, ValueError) as e:
        raise InputError(
            f"model: could not load '{name_or_path}' ({str(e).splitlines()[0]}); pass a local model "
            "directory, a hub id reachable from this machine, or 'organism' (HF_HUB_OFFLINE=1 skips hub retries)"
        ) from e
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.to(device).eval()
    model.requires_grad_(False)
    return model, tokenizer


def model_fingerprint(model) -> str:
    """Model id (path or hub id) plus its revision/commit hash when known, for result provenance."""
    name = getattr(model.config, "_name_or_path", "") or "unknown"
    if Path(name).resolve() == ORGANISM_PATH:
        name = ORGANISM
    commit = getattr(model.config, "_commit_hash", None)
    return f"{name}@{commit}" if commit else name
