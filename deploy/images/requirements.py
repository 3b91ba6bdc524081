"""Print the project's requirements, and those of the given extras, from pyproject.toml, one per line.

The image builds install these in a layer of their own before the source is copied, so that editing the
source does not reinstall torch, vLLM or DeepSpeed; `pip install ".[extras]"` then only adds the project.

    python deploy/images/requirements.py pyproject.toml vllm deepspeed > requirements.txt

An unknown extra is an error (a typo would silently leave an engine out of the image).
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path


def requirements(pyproject: str | Path, extras: list[str]) -> list[str]:
    project = tomllib.loads(Path(pyproject).read_text())["project"]
    optional = project.get("optional-dependencies", {})
    unknown = sorted(set(extras) - set(optional))
    if unknown:
        raise SystemExit(f"requirements.py: unknown extra(s) {unknown}; {pyproject} defines {sorted(optional)}")
    reqs = list(project.get("dependencies", []))
    for extra in extras:
        reqs += [r for r in optional[extra] if r not in reqs]
    return reqs


def main(argv: list[str]) -> int:
    if not argv:
        raise SystemExit("usage: requirements.py PYPROJECT [EXTRA ...]")
    print("\n".join(requirements(argv[0], argv[1:])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
