"""Load a frozen Hugging Face causal LM and its tokenizer from a local path, a hub id, a GGUF file, or a
named model (``organism``, ``smollm2-135m-instruct``: ``ipg.catalog``).

Weights are frozen (``requires_grad=False``): attribution takes gradients with respect to activations
only. ``trust_remote_code`` stays off unless the caller asks for it.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ipg.catalog import NAMED, ORGANISM, ORGANISM_PATH, describe, gguf_model_path, model_names, named_model_path
from ipg.errors import InputError

__all__ = [
    "ORGANISM",
    "ORGANISM_PATH",
    "DTYPES",
    "resolve_model_path",
    "load_model",
    "load_tokenizer",
    "model_context",
    "model_fingerprint",
]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_model_path(name_or_path: str) -> str:
    """A named model -> its checkpoint directory (built into the cache on first use); a ``.gguf`` file
    -> its converted checkpoint; a local directory is checked; anything else is a hub id."""
    if name_or_path == ORGANISM:
        return str(ORGANISM_PATH)
    if name_or_path in NAMED:
        return str(named_model_path(name_or_path))
    path = Path(os.path.expanduser(name_or_path))
    if path.suffix.lower() == ".gguf":
        return str(gguf_model_path(path))
    looks_local = path.exists() or name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1
    if looks_local:
        if not path.is_dir():
            raise InputError(
                f"model: path '{name_or_path}' does not exist or is not a directory; pass a directory "
                f"holding config.json and weights, a .gguf file, a Hugging Face hub id, or a named model {model_names()}"
            )
        if not (path / "config.json").is_file():
            raise InputError(f"model: '{name_or_path}' has no config.json; it is not a Hugging Face model directory")
    return str(path) if looks_local else name_or_path


def model_context(model_or_name, trust_remote_code: bool = False) -> int | None:
    """The most tokens (prompt and generated) the model takes: its config's ``max_position_embeddings``,
    from a loaded model or, cheaply, from the config file of a name or path (a driver holding no
    weights). None when the config does not say."""
    config = getattr(model_or_name, "config", None)
    if config is None and not isinstance(model_or_name, (str, os.PathLike)):
        return None  # a model without a config (a plain module): nothing to check against
    if config is None:
        from transformers import AutoConfig

        try:
            config = AutoConfig.from_pretrained(resolve_model_path(model_or_name), trust_remote_code=trust_remote_code)
        except OSError as e:
            raise _hub_error(model_or_name, e) from None
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    value = getattr(text, "max_position_embeddings", None)
    return int(value) if isinstance(value, int) and value > 0 else None


def _hub_error(name_or_path: str, e: Exception) -> InputError:
    return InputError(
        f"model: could not load '{name_or_path}' ({str(e).splitlines()[0]}); pass a local model directory, a "
        f".gguf file, a hub id reachable from this machine, or a named model {model_names()} "
        "(HF_HUB_OFFLINE=1 skips hub retries)"
    )


def load_tokenizer(name_or_path: str = ORGANISM, *, trust_remote_code: bool = False, revision: str | None = None):
    """The model's tokenizer, padding on the left (batched generation) with a pad token (EOS when the
    model has none). Cheap: what a driver that holds no weights loads."""
    from transformers import AutoTokenizer

    source = resolve_model_path(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code, revision=revision)
    except (OSError, ValueError) as e:
        raise _hub_error(name_or_path, e) from e
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    name_or_path: str = ORGANISM,
    *,
    dtype: str = "float32",
    device: str = "cpu",
    trust_remote_code: bool = False,
    revision: str | None = None,
):
    """Return ``(model, tokenizer)``: the model in eval mode with frozen weights on ``device``, and
    ``load_tokenizer``'s tokenizer."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if dtype not in DTYPES:
        raise InputError(f"model.dtype: '{dtype}' is not supported; use one of {sorted(DTYPES)}")
    source = resolve_model_path(name_or_path)
    kwargs = {"trust_remote_code": trust_remote_code, "revision": revision}
    try:
        config = AutoConfig.from_pretrained(source, **kwargs)  # first and cheapest: one network round if remote
        tokenizer = load_tokenizer(source, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(source, config=config, dtype=DTYPES[dtype], **kwargs)
    except (OSError, ValueError) as e:
        if isinstance(e, InputError):
            raise
        raise _hub_error(name_or_path, e) from e
    model.to(device).eval()
    model.requires_grad_(False)
    return model, tokenizer


def model_fingerprint(model) -> str:
    """Model id (a named model, a path or a hub id) plus its revision/commit hash or source digest when
    known, for result provenance."""
    name = getattr(model.config, "_name_or_path", "") or "unknown"
    named = describe(name) if Path(name).is_dir() else None
    if named:
        return named
    commit = getattr(model.config, "_commit_hash", None)
    return f"{name}@{commit}" if commit else name
