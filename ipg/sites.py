"""Sites and component ids: pure types (no torch), so processes that only merge scores start fast."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ipg.errors import InputError

KINDS = ("residual", "mlp", "sae", "attn")
# Kinds whose components are the input of one of the block's linear projections: (submodule, projection).
# ``attn`` is the concatenated per-head output that ``o_proj`` mixes: head k owns coordinates
# k * head_dim .. (k + 1) * head_dim - 1, so a head is a group of components (``ipg.components.head_groups``).
PROJECTIONS = {"mlp": ("mlp", "down_proj"), "attn": ("self_attn", "o_proj")}
_ID = re.compile(r"^layers\.(\d+)\.(residual|mlp|sae|attn):(\d+)$")


@dataclass(frozen=True, order=True)
class Site:
    layer: int
    kind: str

    def __str__(self) -> str:
        return f"layers.{self.layer}.{self.kind}"


@dataclass(frozen=True, order=True)
class ComponentId:
    layer: int
    kind: str
    index: int

    def __str__(self) -> str:
        return f"layers.{self.layer}.{self.kind}:{self.index}"

    @property
    def site(self) -> Site:
        return Site(self.layer, self.kind)

    @classmethod
    def parse(cls, text: str) -> "ComponentId":
        m = _ID.match(text.strip())
        if not m:
            raise InputError(f"component id '{text}': expected 'layers.<layer>.<residual|mlp|sae|attn>:<index>'")
        return cls(int(m.group(1)), m.group(2), int(m.group(3)))
