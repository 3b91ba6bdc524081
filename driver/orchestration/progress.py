"""Progress of long work: a bar on a terminal, plain lines (every ~10% or 30 s) in a job log, or nothing."""

from __future__ import annotations

import sys
import time


class Progress:
    """A bar on a terminal, plain lines (every ~10% or 30 s) in a job log, or nothing."""

    def __init__(self, total: int, what: str, mode: str = "auto", log=print):
        self.total, self.what, self.done, self.start, self.last = total, what, 0, time.perf_counter(), 0.0
        self.mode = ("bar" if sys.stderr.isatty() else "lines") if mode == "auto" else mode
        self.log, self.bar = log, None
        if self.mode == "bar" and total:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=what, unit="shard", file=sys.stderr, leave=False)

    def advance(self, n: int = 1, prompts: int = 0) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            return
        elapsed = time.perf_counter() - self.start
        step = max(1, self.total // 10)
        if self.mode == "lines" and (self.done % step == 0 or self.done == self.total or elapsed - self.last > 30):
            self.last = elapsed
            eta = elapsed / self.done * (self.total - self.done)
            self.log(
                f"  {self.what}: {self.done}/{self.total} shards ({100 * self.done / self.total:.0f}%), "
                f"{elapsed:.1f} s, ~{eta:.0f} s left"
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
