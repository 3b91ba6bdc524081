"""How a command ends when it fails: one ``error:`` line on stderr naming the cause (and, for bad input,
the fix) and an exit code: 2 for input, 1 for a run that failed, 130 when interrupted. The traceback
goes to a log file that the line names (``error.log`` in the run directory when there is one, else a
file in the temporary directory), or to the terminal with ``--debug``."""

from __future__ import annotations

import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

from ipg.cluster.errors import FatalError
from ipg.errors import InputError


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _save_traceback(exc: BaseException, run_dir: str | None) -> Path:
    if run_dir and Path(run_dir).is_dir():
        path = Path(run_dir) / "error.log"
    else:
        path = Path(tempfile.gettempdir()) / f"ipg-error-{os.getpid()}.log"
    text = "".join(traceback.format_exception(exc))
    try:
        with open(path, "a") as f:
            f.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(sys.argv)}\n{text}\n")
    except OSError:
        path = Path(tempfile.mkstemp(prefix="ipg-error-", suffix=".log")[1])
        path.write_text(text)
    return path


def report_failure(exc: BaseException, run_dir: str | None = None, debug: bool = False) -> int:
    """Print the failure's one line (the traceback too with ``debug``) and return the exit code."""
    if debug:
        traceback.print_exception(exc)
    if isinstance(exc, InputError):
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if isinstance(exc, KeyboardInterrupt):
        resume = f"; continue it with --resume {run_dir}" if run_dir and Path(run_dir).is_dir() else ""
        print(f"error: interrupted{resume}", file=sys.stderr)
        return 130
    log = _save_traceback(exc, run_dir)
    what = _first_line(exc) if isinstance(exc, FatalError) else f"{type(exc).__name__}: {_first_line(exc)}"
    print(f"error: {what} (details in {log}{'' if debug else '; --debug prints them'})", file=sys.stderr)
    return 1
