"""What every benchmark records and takes: the date and machine of a measurement, and its --threads and --out."""

from __future__ import annotations

import os
import platform
import time


def measured_on() -> dict:
    """The date and the machine (architecture, CPU count) of a measurement, for its results file."""
    return {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} CPUs"}


def run_options(ap) -> None:
    """``--threads`` (torch threads, default every CPU) and ``--out`` (the results JSON)."""
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--out")
