"""Control: scale selected components by gamma, or add a vector, on every forward pass of generation.

    with ipg.steering.scale(model, components, gamma=0.0):    # ablate
        samples = generate(model, tokenizer, examples)

gamma > 1 enhances, gamma < 1 suppresses, gamma = 0 ablates. SAE features are scaled in feature space and
written back with the SAE's error term kept (see components.edit).

Positions: ``"generated"`` (default) edits the decision positions, the states that predict generated
tokens, which are exactly the positions the components were attributed at; ``"all"`` also edits every
prompt position. The default keeps the prompt's own representation intact, so a steering effect is the
effect on reasoning, not on reading the question.

Per-row steering (``per_row``): one generation batch whose rows are steered differently, each row by
one of several *variants* (a scaling, an added vector, or none). Every site a variant touches gets one
hook holding a (variants x width) table of factors and of added values, and the hook gathers the rows'
table entries: one multiply-add over the batch, no loop over rows. A factor of 1 and an added 0 leave
a row's values bit-identical, so each row computes what a batch steered by its variant alone would.

    with ipg.steering.per_row(model, [None, {"scale": comps, "gamma": 0.0}]) as rows:
        rows(torch.tensor([0, 1, 1]))          # which variant each row of the next forwards is
"""

from __future__ import annotations

from collections import defaultdict
from contextlib import ExitStack, contextmanager

import torch

from ipg.components import ComponentId, Site, check_site, edit
from ipg.errors import InputError
from ipg.interventions import DEFAULT, affine


def by_site(components: list[ComponentId]) -> dict[Site, list[int]]:
    sites: dict[Site, list[int]] = defaultdict(list)
    for c in components:
        sites[c.site].append(c.index)
    return sites


def site_edits(components: list[ComponentId], gamma: float, intervention: str = DEFAULT, centre=None):
    """Per site: ``(indices, factor, offset)`` of the intervention at ``gamma`` (``ipg.interventions``);
    ``offset`` (one value per index) is None for a pure scaling. Repeated components count once."""
    factor, offset = affine(intervention, gamma, centre, len(components))
    per_site: dict[Site, dict[int, float]] = defaultdict(dict)
    for k, c in enumerate(components):
        per_site[c.site][c.index] = 0.0 if offset is None else float(offset[k])
    out = {}
    for site, entries in per_site.items():
        idx = sorted(entries)
        out[site] = (idx, factor, None if offset is None else torch.tensor([entries[i] for i in idx]))
    return out


@contextmanager
def scale(model, components: list[ComponentId], gamma: float, *, positions: str = "generated",
          saes: dict | None = None, intervention: str = DEFAULT, centre=None):  # fmt: skip
    """Steer each selected component at strength ``gamma`` while the body runs (all hooks removed on exit).
    ``intervention`` (``ipg.interventions``): ``scale`` (the default, h -> gamma h, what ``ipg run`` ships),
    ``mean`` or ``add``, which need ``centre``: one support mean per component."""
    if not components:
        raise InputError("steering: no components selected; pass at least one ComponentId")
    with ExitStack() as stack:
        for site, (indices, factor, offset) in site_edits(components, gamma, intervention, centre).items():
            idx = torch.tensor(indices)

            def fn(h, idx=idx, factor=factor, offset=offset):  # h: (B, T_sel, width)
                idx_d = idx.to(h.device)
                out = h.clone()
                steered = h[..., idx_d] * factor
                out[..., idx_d] = steered if offset is None else steered + offset.to(h.device, h.dtype)
                return out

            stack.enter_context(edit(model, site, fn, positions=positions, saes=saes))
        yield


@contextmanager
def add_vector(model, layer: int, vector: torch.Tensor, coefficient: float, *, positions: str = "generated"):
    """Add ``coefficient * vector`` (hidden,) to block ``layer``'s output while the body runs."""
    v = vector.detach()

    def fn(h):  # (B, T_sel, hidden)
        return h + coefficient * v.to(h.device, h.dtype)

    with edit(model, Site(layer, "residual"), fn, positions=positions):
        yield


def _variant_components(variant: dict) -> list[ComponentId]:
    return [ComponentId.parse(c) if isinstance(c, str) else c for c in variant["scale"]]


def variant_sites(variants: list[dict | None]) -> list[Site]:
    """The sites the variants edit, in a fixed order: each gets one hook."""
    sites = set()
    for v in variants:
        if v is None:
            continue
        if "scale" in v:
            sites |= {c.site for c in _variant_components(v)}
        else:
            sites.add(Site(int(v["add"]), "residual"))
    return sorted(sites)


def variant_tables(variants: list[dict | None], widths: dict[Site, int]) -> dict[Site, dict[str, torch.Tensor]]:
    """Per site, ``{"scale": (V, width) float32 factors}`` and/or ``{"add": (V, width) float32 vectors}``
    of the variants (None: no steering; ``{"scale": components, "gamma"}``, optionally with
    ``"intervention"`` and ``"centre"`` as ``scale`` takes them; ``{"add": layer, "vector",
    "coefficient"}``); row v is variant v. A site gets a table of a kind only when some variant uses it."""
    tables: dict[Site, dict[str, torch.Tensor]] = {}
    for v, variant in enumerate(variants):
        if variant is None:
            continue
        if "scale" in variant:
            edits = site_edits(
                _variant_components(variant),
                variant["gamma"],
                variant.get("intervention", DEFAULT),
                variant.get("centre"),
            )
            for site, (indices, factor, offset) in edits.items():
                t = tables.setdefault(site, {})
                if "scale" not in t:
                    t["scale"] = torch.ones(len(variants), widths[site])
                t["scale"][v, indices] = factor
                if offset is not None:
                    if "add" not in t:
                        t["add"] = torch.zeros(len(variants), widths[site])
                    t["add"][v, indices] = offset
        else:
            site = Site(int(variant["add"]), "residual")
            t = tables.setdefault(site, {})
            if "add" not in t:
                t["add"] = torch.zeros(len(variants), widths[site])
            vector = torch.as_tensor(variant["vector"], dtype=torch.float32).detach().cpu()
            t["add"][v] = float(variant["coefficient"]) * vector
    return tables


def apply_rows(h: torch.Tensor, table: dict[str, torch.Tensor], rows: torch.Tensor) -> torch.Tensor:
    """``h`` (b, ..., width) with row i steered by variant ``rows[i]``: times its factors (in float32, as
    ``scale`` computes) and plus its vector (in h's dtype, as ``add_vector`` does)."""
    shape = (rows.shape[0],) + (1,) * (h.dim() - 2) + (h.shape[-1],)
    out = h
    if "scale" in table:
        out = (out.float() * table["scale"][rows].view(shape)).to(h.dtype)
    if "add" in table:
        out = out + table["add"][rows].view(shape).to(h.dtype)
    return out


@contextmanager
def per_row(model, variants: list[dict | None], *, positions: str = "generated", saes: dict | None = None):
    """Steer each row of the body's forward passes by its own variant (see the module docstring). Yields
    ``rows(index)``: call it with a (batch,) tensor of variant numbers before the forwards it applies to
    (``ipg.generation``'s decode loop does, through ``on_rows``). Hooks are removed on exit."""
    widths = {site: check_site(model, site, saes) for site in variant_sites(variants)}
    tables = variant_tables(variants, widths)
    device = next(model.parameters()).device
    tables = {site: {k: t.to(device) for k, t in table.items()} for site, table in tables.items()}
    current = {"rows": None}

    def rows(index: torch.Tensor) -> None:
        current["rows"] = index.to(device)

    with ExitStack() as stack:
        for site, table in tables.items():
            stack.enter_context(
                edit(
                    model,
                    site,
                    lambda h, table=table: apply_rows(h, table, current["rows"]),
                    positions=positions,
                    saes=saes,
                )
            )
        yield rows
