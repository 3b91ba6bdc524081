"""Running a command from a test: its output captured as text, so that a failing assert can show it."""

import subprocess


def run(cmd: list, *, env: dict | None = None, timeout: float = 600, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], env=env, capture_output=True, text=True, timeout=timeout, **kw)
