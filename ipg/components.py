"""Components of a decoder model, their canonical ids, and hooks that edit them.

A *site* is one hookable tensor of block ``l``; its coordinates are the components:

``layers.{l}.residual``  output of decoder block l, (B, T, hidden)         -- the paper's neurons
``layers.{l}.mlp``       input of block l's ``mlp.down_proj``, (B, T, intermediate)
``layers.{l}.attn``      input of block l's ``self_attn.o_proj``: the heads' outputs side by side,
                         (B, T, n_heads * head_dim); head k is coordinates k*head_dim .. (k+1)*head_dim-1
``layers.{l}.sae``       TopK SAE features of block l's output, (B, T, n_features); editing keeps the
                         SAE's error term: out = z + W_dec (f' - f), so untouched features leave the
                         block output bit-identical

A component id is ``layers.{l}.{kind}:{index}``, e.g. ``layers.20.residual:1337``.

Edits are context managers over forward hooks, removed in ``finally`` even when the body raises.
Which positions an edit touches during generation (``positions``):
``"generated"``  the decision positions: in a prefill call only the last prompt position, then every
                 newly fed token (these are the states that predict generated tokens)
``"all"``        every position, prompt included
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Callable

import torch

from ipg.errors import InputError
from ipg.sites import KINDS, PROJECTIONS, ComponentId, Site  # noqa: F401 (re-exported: the pure types live in ipg.sites)

POSITIONS = ("generated", "all")


def decoder_layers(model) -> torch.nn.ModuleList:
    """The model's list of decoder blocks (``model.model.layers``), or a clear error."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise InputError(
            f"model: {type(model).__name__} has no model.layers; supported are decoder-only HF models with "
            "model.model.layers blocks (Qwen2/Qwen3/Llama/Mistral/Gemma families)"
        )
    return layers


def check_site(model, site: Site, saes: dict | None = None) -> int:
    """Validate a site against the model; return its width (number of components)."""
    n_layers = len(decoder_layers(model))
    if site.kind not in KINDS:
        raise InputError(f"kind: unknown '{site.kind}'; use one of {list(KINDS)}")
    if not 0 <= site.layer < n_layers:
        raise InputError(f"layers: {site.layer} is out of range for this {n_layers}-layer model; use 0..{n_layers - 1}")
    if site.kind == "residual":
        return model.config.hidden_size
    if site.kind in PROJECTIONS:
        return projection(model, site).in_features
    sae = (saes or {}).get(site.layer)
    if sae is None:
        raise InputError(
            f"sae: kind 'sae' at layer {site.layer} needs an SAE for that layer; pass saes={{{site.layer}: sae}}"
        )
    if sae.d_model != model.config.hidden_size:
        raise InputError(
            f"sae: SAE for layer {site.layer} has d_model {sae.d_model}, the model's hidden size is {model.config.hidden_size}"
        )
    return sae.n_features


def projection(model, site: Site) -> torch.nn.Linear:
    """The linear projection whose input is the site (``mlp``: ``mlp.down_proj``, ``attn``: ``self_attn.o_proj``)."""
    parent, name = PROJECTIONS[site.kind]
    module = getattr(getattr(decoder_layers(model)[site.layer], parent, None), name, None)
    if not isinstance(module, torch.nn.Linear):
        raise InputError(
            f"kind: '{site.kind}' needs block {site.layer} to have {parent}.{name} (a Linear); this model has none"
        )
    return module


def head_dim(model) -> int:
    """Width of one attention head: the group of ``attn`` coordinates that one head writes."""
    cfg = model.config
    return int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)


def head_groups(model, layer: int) -> list[list[int]]:
    """The ``attn`` components of block ``layer`` grouped by head: group k holds head k's coordinates."""
    width, d = check_site(model, Site(layer, "attn")), head_dim(model)
    if width % d:
        raise InputError(f"kind: 'attn' width {width} of block {layer} is not a whole number of {d}-wide heads")
    return [list(range(k * d, (k + 1) * d)) for k in range(width // d)]


_PREFIX = ContextVar("ipg_prompt_prefix", default=False)


@contextmanager
def prompt_prefix():
    """The forwards of the body run a prompt without its last token (generation's shared prefill): they hold
    no decision position, so ``"generated"`` edits leave them alone."""
    token = _PREFIX.set(True)
    try:
        yield
    finally:
        _PREFIX.reset(token)


def _select(t: int, positions: str) -> slice:
    """Positions of a (B, T, .) call to edit: see the module docstring."""
    if positions == "all" or t == 1:
        return slice(None)
    return slice(t - 1, t)


def _apply(x: torch.Tensor, fn, sel: slice) -> torch.Tensor:
    out = x.clone()
    out[:, sel] = fn(x[:, sel]).to(x.dtype)
    return out


@contextmanager
def edit(
    model,
    site: Site,
    fn: Callable[[torch.Tensor], torch.Tensor],
    *,
    positions: str = "generated",
    saes: dict | None = None,
):
    """Replace the site's components ``h`` (B, T_sel, width) by ``fn(h)`` on every forward pass.

    Works during generation (KV cache) and teacher forcing alike; see the module docstring for
    ``positions``. The hook is removed on exit, also when the body raises.
    """
    if positions not in POSITIONS:
        raise InputError(f"positions: unknown '{positions}'; use one of {list(POSITIONS)}")
    check_site(model, site, saes)
    block = decoder_layers(model)[site.layer]
    if site.kind in PROJECTIONS:

        def pre_hook(module, args):
            if positions == "generated" and _PREFIX.get():
                return None
            (x,) = args[:1]  # (B, T, width): the projection's input
            return (_apply(x, fn, _select(x.shape[1], positions)),) + tuple(args[1:])

        handle = projection(model, site).register_forward_pre_hook(pre_hook)
    else:
        sae = saes[site.layer] if site.kind == "sae" else None

        def hook(module, args, output):
            if positions == "generated" and _PREFIX.get():
                return None
            z = output[0] if isinstance(output, tuple) else output  # (B, T, hidden)
            sel = _select(z.shape[1], positions)
            if sae is None:
                new = _apply(z, fn, sel)
            else:
                new = z.clone()
                f = sae.encode(z[:, sel])  # (B, T_sel, n_features)
                new[:, sel] = z[:, sel] + sae.decode_delta(fn(f) - f).to(z.dtype)
            return (new,) + tuple(output[1:]) if isinstance(output, tuple) else new

        handle = block.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def capture(model, sites: list[Site], saes: dict | None = None):
    """Record each site's activations ``{site: (B, T, width)}`` on the forward passes of the body
    (the last pass wins). Also records the input of each block that an ``mlp`` or ``attn`` site needs, under
    ``Site(l, "block_input")``. Hooks are removed on exit."""
    store: dict[Site, torch.Tensor] = {}
    handles = []
    layers = decoder_layers(model)
    try:
        for site in sites:
            check_site(model, site, saes)
            block = layers[site.layer]
            if site.kind in PROJECTIONS:
                handles.append(
                    projection(model, site).register_forward_pre_hook(
                        lambda m, args, s=site: store.__setitem__(s, args[0].detach())
                    )
                )
                handles.append(
                    block.register_forward_pre_hook(
                        lambda m, args, kwargs, s=site: store.__setitem__(
                            Site(s.layer, "block_input"), (args[0] if args else kwargs["hidden_states"]).detach()
                        ),
                        with_kwargs=True,
                    )
                )
            else:
                sae = saes[site.layer] if site.kind == "sae" else None

                def hook(module, args, output, s=site, sae=sae):
                    z = (output[0] if isinstance(output, tuple) else output).detach()
                    store[s] = z if sae is None else sae.encode(z)
                    if sae is not None:
                        store[Site(s.layer, "residual")] = z

                handles.append(block.register_forward_hook(hook))
        yield store
    finally:
        for h in handles:
            h.remove()


class _Stop(Exception):
    """Raised by the hook on the highest captured block: nothing above it is needed."""


def capture_sites(
    model, sites: list[Site], id_lists: list[list[int]], saes: dict | None = None, *, stop_early: bool = True
) -> dict[Site, dict[str, torch.Tensor]]:
    """One no-grad forward of the right-padded sequences (causal attention: padding after a sequence
    cannot change it) that records every site: ``{site: {"h": (B, T, width)}}``, plus ``"block_input"``
    for ``mlp`` and ``attn`` sites; an ``sae`` site is captured on the residual (kept as ``"residual"``)
    and encoded. With ``stop_early`` the forward stops after the highest site's block (the blocks above it
    and the final norm never run); ZeRO-3 ranks pass False, since their collective parameter gathers
    expect whole forwards."""
    device = next(model.parameters()).device
    width = max(len(ids) for ids in id_lists)
    ids = torch.tensor([i + [0] * (width - len(i)) for i in id_lists], device=device)  # (B, T)
    captured = sorted({Site(s.layer, "residual") if s.kind == "sae" else s for s in sites})
    top = max(s.layer for s in sites)

    def stop(module, args, output):
        raise _Stop

    with torch.no_grad(), capture(model, captured) as store:
        handle = (
            decoder_layers(model)[top].register_forward_hook(stop) if stop_early else None
        )  # after the capture hooks
        try:
            model.model(input_ids=ids, use_cache=False)
        except _Stop:
            pass
        finally:
            if handle is not None:
                handle.remove()
    out = {}
    for site in sites:
        h = store[Site(site.layer, "residual") if site.kind == "sae" else site]
        out[site] = {"h": saes[site.layer].encode(h), "residual": h} if site.kind == "sae" else {"h": h}
        if site.kind in PROJECTIONS:
            out[site]["block_input"] = store[Site(site.layer, "block_input")]
    return out


def site_activations(
    model,
    site: Site,
    sequences: list[tuple[list[int], int]],
    *,
    saes: dict | None = None,
    batch_tokens: int = 8192,
    stop_early: bool = True,
):
    """Yield ``(ids, prompt_len, h (T, width))`` per ``(ids, prompt_len)``: the site's components at
    every position, float32 on the CPU; forwards batched under ``batch_tokens``."""
    chunk = max(1, batch_tokens // max(len(ids) for ids, _ in sequences))
    for c in range(0, len(sequences), chunk):
        part = sequences[c : c + chunk]
        h = capture_sites(model, [site], [ids for ids, _ in part], saes, stop_early=stop_early)[site]["h"]
        for (ids, prompt_len), row in zip(part, h):
            yield ids, prompt_len, row[: len(ids)].float().cpu()
