"""A run's output directory: checked before any work, and held by one run at a time.

``claim(out, command, resume=..., overwrite=...)`` refuses, in one ``InputError`` naming ``--out`` and the fix:
a path that is a file; a directory that holds another run (a run record or results of this project)
unless the run resumes it or overwrites it; a directory another live run holds. It then takes the
directory's lock, ``.ipg.lock`` (created exclusively; it names the pid, host and command), which the
run holds until it ends. A lock whose process is gone (same host, pid not alive) is stale and taken
over; a lock from another host cannot be checked, so the error says how to remove it.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from ipg.errors import InputError

LOCK = ".ipg.lock"
# what this project writes into a run directory: any of them means the directory holds a run
RUN_FILES = ("config.yaml", "run.json", "attribution.json", "scores.parquet", "reducer-snapshot.parquet", "report.md")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


class RunDir:
    """The lock on ``path``, released by ``release()`` or at the end of a ``with`` block."""

    def __init__(self, path: Path, lock: Path):
        self.path, self.lock = path, lock

    def release(self) -> None:
        try:
            held = json.loads(self.lock.read_text())
        except (OSError, ValueError):
            return
        if held.get("pid") == os.getpid() and held.get("host") == socket.gethostname():
            self.lock.unlink(missing_ok=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def claim(out: str | Path, command: str, *, resume: bool = False, overwrite: bool = False) -> RunDir:
    """Check ``out`` and take its lock (see the module note). ``overwrite`` removes the run found there
    first; nothing else is written."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise InputError(f"--out: '{path}' is a file; give a directory (it is created if missing)")
    if resume and not path.is_dir():
        raise InputError(f"--resume: '{path}' is not a directory")
    lock = path / LOCK
    if lock.exists():
        _refuse_or_clear(path, lock)
    found = [name for name in RUN_FILES if (path / name).exists()] if path.is_dir() and not resume else []
    if found and not overwrite:
        raise InputError(
            f"--out: '{path}' holds another run ({found[0]}); continue it with --resume {path}, "
            "replace it with --overwrite, or choose another directory"
        )
    if found:
        _remove_run(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"--out: cannot create '{path}' ({e.strerror}); choose a writable directory") from None
    record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": command, "started": time.time()})
    for _ in range(2):  # a second try after removing a stale lock
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            _refuse_or_clear(path, lock)
            continue
        except OSError as e:
            raise InputError(f"--out: cannot write into '{path}' ({e.strerror}); choose a writable directory") from None
        with os.fdopen(fd, "w") as f:
            f.write(record)
        return RunDir(path, lock)
    raise InputError(f"--out: '{path}' was claimed by another run just now; wait for it, or choose another directory")


def check_cluster(cfg, resume: bool = False) -> None:
    """Before the directory is touched: a run on Ray needs its cluster to answer (a resumed run's saved
    address may name a cluster that is gone)."""
    if cfg.ray.active() or resume:
        from ipg.cluster.ray_cluster import reachable

        address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
        if address:
            reachable(address)


def _remove_run(path: Path) -> None:
    """--overwrite: remove the directory of a previous run, recognised by its config.yaml (the run config
    this project writes); a directory without one is left alone."""
    import shutil

    import yaml

    try:
        saved = yaml.safe_load((path / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        saved = None
    if not (isinstance(saved, dict) and {"model", "attribution"} <= set(saved)):
        raise InputError(
            f"--overwrite: '{path}' holds results but no config.yaml of a run, so it is not removed; "
            "remove it yourself or choose another directory"
        )
    shutil.rmtree(path)


def _refuse_or_clear(path: Path, lock: Path) -> None:
    try:
        held = json.loads(lock.read_text())
    except (OSError, ValueError):  # being written by the run that just created it, or damaged
        held = {}
    host, pid = held.get("host"), held.get("pid")
    if host == socket.gethostname() and isinstance(pid, int) and not _alive(pid):
        lock.unlink(missing_ok=True)  # stale: its run is gone
        return
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(held["started"])) if "started" in held else "?"
    raise InputError(
        f"--out: '{path}' is held by another run ({held.get('command', '?')}, pid {pid} on host {host}, "
        f"since {since}); wait for it to end, or if that run is gone, remove {lock}"
    )
