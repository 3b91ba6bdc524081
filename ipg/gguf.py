"""A GGUF file (llama.cpp's format) as an ordinary Hugging Face checkpoint directory.

transformers reads a GGUF when the ``gguf`` package is installed and dequantizes its tensors to
float32, but the model it returns carries a ``quantization_config`` that ``save_pretrained`` refuses.
So the conversion builds a fresh model of the same class from the config without that key, loads the
dequantized state dict into it (every key must match), and saves that: weights as safetensors, the
config, the generation config and the tokenizer (with the chat template the GGUF carries). Everything
is written to a temporary directory beside the target and renamed into place, so a killed conversion
leaves no half-written checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path

from ipg.errors import InputError

SOURCE = "ipg-source.json"  # beside the converted weights: what they were built from


def sha256_of(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def require_gguf_support(what: str) -> None:
    """An InputError naming the missing packages when transformers cannot read GGUF files here."""
    import importlib.util

    missing = [p for p in ("gguf", "accelerate") if importlib.util.find_spec(p) is None]
    if missing:
        raise InputError(
            f"{what}: converting a GGUF file needs the package(s) {', '.join(missing)}; "
            "install them with `pip install 'ipg[gguf]'` (or `pip install gguf accelerate`)"
        )


def convert_gguf(gguf_path: str | Path, out_dir: str | Path, *, sha256: str | None = None, what: str = "model") -> Path:
    """Write ``out_dir``: the GGUF's model and tokenizer as a float32 Hugging Face checkpoint.

    ``sha256``: the digest the file must have (checked before anything is converted). ``what`` names
    the setting that asked for the conversion in error messages. Returns ``out_dir``."""
    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    if not gguf_path.is_file():
        raise InputError(f"{what}: GGUF file '{gguf_path}' not found")
    require_gguf_support(what)
    digest = sha256_of(gguf_path)
    if sha256 is not None and digest != sha256:
        raise InputError(
            f"{what}: '{gguf_path}' has sha256 {digest}, expected {sha256}; the download is corrupt or "
            "not the published file; delete it and try again"
        )
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    folder, name = str(gguf_path.parent), gguf_path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    except Exception as e:  # the reader fails in many ways on a broken file (struct.error, ValueError, KeyError, ...)
        raise InputError(
            f"{what}: transformers could not read '{gguf_path}' ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
            "its architecture or quantization may not be supported by this transformers version"
        ) from e
    config_dict = loaded.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict.pop("_name_or_path", None)
    config = AutoConfig.for_model(**config_dict)
    model = type(loaded)(config)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    if missing or unexpected:
        raise InputError(
            f"{what}: the GGUF's tensors do not match a {type(loaded).__name__} "
            f"(missing {list(missing)[:3]}, unexpected {list(unexpected)[:3]})"
        )
    model.tie_weights()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.{uuid.uuid4().hex}"
    tmp.mkdir(mode=0o777)  # narrowed by the umask, as any saved checkpoint (mkdtemp would make it 0700)
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        generation = getattr(loaded, "generation_config", None) or GenerationConfig.from_model_config(config)
        generation.save_pretrained(tmp)
        (tmp / SOURCE).write_text(
            json.dumps(
                {
                    "gguf": name,
                    "sha256": digest,
                    "architecture": type(loaded).__name__,
                    "parameters": sum(p.numel() for p in model.parameters()),
                },
                indent=2,
            )
            + "\n"
        )
        if out_dir.exists():  # an older or broken conversion: replaced whole
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
