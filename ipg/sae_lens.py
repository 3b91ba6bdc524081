"""SAELens's on-disk layout: load pretrained SAEs users bring, export the project's.

An SAE saved by SAELens (``SAE.save_model``, and the releases it loads with ``SAE.load_from_disk``) is a
directory of two files:
  cfg.json                 {"architecture": "standard" | "topk" | "jumprelu", "d_in", "d_sae", "dtype",
                            "apply_b_dec_to_input", "normalize_activations", "k" (topk),
                            "rescale_acts_by_decoder_norm" (topk), "metadata": {"hook_name", "model_name",
                            "sae_lens_version", ...}}; configs older than SAELens 6 keep "hook_name" (or
                            "hook_point") and "hook_layer" at the top level and name the activation in
                            "activation_fn_str" / "activation_fn" ("relu", or "topk" with
                            "activation_fn_kwargs": {"k": ...})
  sae_weights.safetensors  W_enc (d_in, d_sae), b_enc (d_sae), W_dec (d_sae, d_in), b_dec (d_in), and
                            threshold (d_sae) for JumpReLU
with  f = act((x - b_dec * apply_b_dec_to_input) @ W_enc + b_enc)  and  x_hat = f @ W_dec + b_dec.

ipg reads a block's residual output, which TransformerLens names ``blocks.L.hook_resid_post`` (the same
tensor as ``blocks.{L+1}.hook_resid_pre``). A TopK SAE whose pre-activations are rescaled by its
decoder's row norms is folded on load (encoder scaled up, decoder to unit rows): the same function.
Activation normalisation other than "none" is refused: ipg edits raw activations.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ipg.errors import InputError

CFG = "cfg.json"
WEIGHTS = "sae_weights.safetensors"
LAYOUT_VERSION = "6.0.0"  # the SAELens release whose layout ``export`` writes
_ARCH = {"standard": "relu", "topk": "topk", "jumprelu": "jumprelu"}  # SAELens name -> ipg's
_HOOK = re.compile(r"^blocks\.(\d+)\.hook_resid_(pre|post)$")


def _config(path: Path) -> dict:
    cfg_path, weights = path / CFG, path / WEIGHTS
    for f in (cfg_path, weights):
        if not f.is_file():
            raise InputError(
                f"sae: '{path}' is not a SAELens SAE directory: {f.name} is missing (the layout is {CFG} and {WEIGHTS})"
            )
    try:
        cfg = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"sae: {cfg_path} is not JSON ({e.msg} at line {e.lineno})") from None
    meta = cfg.get("metadata") or {}
    for key in ("hook_name", "model_name"):  # before SAELens 6 these sat at the top level
        if key not in meta:
            meta[key] = cfg.get(key, cfg.get("hook_point") if key == "hook_name" else None)
    activation = cfg.get("activation_fn", cfg.get("activation_fn_str", "relu"))
    architecture = cfg.get("architecture") or ("topk" if activation == "topk" else "standard")
    if architecture not in _ARCH:
        raise InputError(
            f"sae: {cfg_path} architecture {architecture!r}: ipg loads {', '.join(_ARCH)} "
            "(SAELens saves BatchTopK SAEs as jumprelu)"
        )
    k = cfg.get("k", (cfg.get("activation_fn_kwargs") or {}).get("k"))
    if architecture == "topk" and not k:
        raise InputError(f"sae: {cfg_path} is a topk SAE without 'k'")
    normalize = cfg.get("normalize_activations", "none")
    if normalize not in (None, False, "none"):
        raise InputError(
            f"sae: {cfg_path} normalize_activations {normalize!r}: ipg edits raw activations; fold the "
            "normalisation into the weights first (SAELens: fold_activation_norm_scaling_factor) and set it to 'none'"
        )
    if cfg.get("reshape_activations", "none") != "none" or cfg.get("finetuning_scaling_factor"):
        raise InputError(
            f"sae: {cfg_path}: reshaped (hook_z) or finetuning-scaled SAEs are not residual-stream SAEs ipg can edit"
        )
    return {
        "cfg": cfg,
        "meta": meta,
        "architecture": _ARCH[architecture],
        "k": int(k or 0),
        "d_in": int(cfg["d_in"]),
        "d_sae": int(cfg["d_sae"]),
        "layer": layer_of(meta.get("hook_name"), cfg_path, cfg.get("hook_layer")),
    }


def layer_of(hook_name: str | None, where: Path | str = CFG, hook_layer=None) -> int:
    """The block whose output the hook reads; -1 when the config names no hook (the layer the SAE is
    listed under then decides)."""
    if not hook_name:
        return int(hook_layer) if hook_layer is not None else -1
    m = _HOOK.match(hook_name)
    if not m or (m.group(2) == "pre" and m.group(1) == "0"):
        raise InputError(
            f"sae: {where} hook_name {hook_name!r}: ipg's SAEs read a block's residual output "
            "(blocks.L.hook_resid_post, or blocks.{L+1}.hook_resid_pre)"
        )
    return int(m.group(1)) - (m.group(2) == "pre")


def header(path: str | Path) -> dict:
    """The SAE's shape and layer, as ``SAE.header`` gives them, without reading its weights."""
    c = _config(Path(path))
    return {
        "d_model": str(c["d_in"]),
        "n_features": str(c["d_sae"]),
        "k": str(c["k"]),
        "layer": str(c["layer"]),
        "model": str(c["meta"].get("model_name") or ""),
        "architecture": c["architecture"],
        "format": "sae_lens",
    }


def read(path: str | Path) -> tuple[tuple, dict]:
    """A SAELens SAE directory as an ipg SAE's constructor arguments and state dict (float32, on the CPU);
    ``ipg.sae.SAE.load`` builds the SAE from them."""
    path = Path(path)
    c = _config(path)
    w = {k: v.to(torch.float32) for k, v in load_file(str(path / WEIGHTS)).items()}
    need = {
        "W_enc": (c["d_in"], c["d_sae"]),
        "b_enc": (c["d_sae"],),
        "W_dec": (c["d_sae"], c["d_in"]),
        "b_dec": (c["d_in"],),
    }
    if c["architecture"] == "jumprelu":
        need["threshold"] = (c["d_sae"],)
    for name, shape in need.items():
        if name not in w:
            raise InputError(f"sae: {path / WEIGHTS} has no tensor '{name}' (it has {', '.join(sorted(w))})")
        if tuple(w[name].shape) != shape:
            raise InputError(
                f"sae: {path / WEIGHTS} '{name}' has shape {tuple(w[name].shape)}; cfg.json's d_in "
                f"{c['d_in']} and d_sae {c['d_sae']} make it {shape}"
            )
    if c["architecture"] == "topk" and c["cfg"].get("rescale_acts_by_decoder_norm"):
        norm = w["W_dec"].norm(dim=-1).clamp(min=1e-12)  # (d_sae,): fold it, as SAELens's own fold does
        w["W_enc"], w["b_enc"], w["W_dec"] = w["W_enc"] * norm, w["b_enc"] * norm, w["W_dec"] / norm[:, None]
    args = (
        c["d_in"],
        c["d_sae"],
        c["k"],
        c["layer"],
        str(c["meta"].get("model_name") or ""),
        c["architecture"],
        bool(c["cfg"].get("apply_b_dec_to_input", True)),
    )
    state = {"W_enc": w["W_enc"].T, "b_enc": w["b_enc"], "W_dec": w["W_dec"].T, "b_pre": w["b_dec"]}
    if c["architecture"] == "jumprelu":
        state["threshold"] = w["threshold"]
    return args, {k: v.contiguous() for k, v in state.items()}


def export(sae, path: str | Path) -> Path:
    """Write ``sae`` (an ``ipg.sae.SAE``) as a SAELens SAE directory at ``path`` (replaced whole, never half-written)."""
    path = Path(path)
    architecture = {v: k for k, v in _ARCH.items()}[sae.architecture]
    cfg = {
        "architecture": architecture,
        "d_in": sae.d_model,
        "d_sae": sae.n_features,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": sae.subtract_b_pre,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {
            "sae_lens_version": LAYOUT_VERSION,
            "model_name": sae.model,
            "hook_name": f"blocks.{sae.layer}.hook_resid_post",
            "hook_layer": sae.layer,
            "exported_by": "ipg",
        },
    }
    if sae.architecture == "topk":
        cfg.update(k=sae.k, rescale_acts_by_decoder_norm=False)
    weights = {"W_enc": sae.W_enc.T, "b_enc": sae.b_enc, "W_dec": sae.W_dec.T, "b_dec": sae.b_pre}
    if sae.architecture == "jumprelu":
        weights["threshold"] = sae.threshold
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        save_file({k: v.detach().contiguous().cpu().float() for k, v in weights.items()}, str(tmp / WEIGHTS))
        (tmp / CFG).write_text(json.dumps(cfg, indent=2) + "\n")
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path
