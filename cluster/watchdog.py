"""``python -m ipg.cluster.watchdog DRIVER_PID``: the local Ray cluster a driver started dies with it.

A driver that starts a local cluster (``ray.init`` without an address) owns its processes: GCS, raylet,
dashboard, agents, workers. When the driver exits normally, ``ray.shutdown`` stops them; when it is
killed (SIGKILL, the OOM killer), some outlive it as orphans (measured: the dashboard and runtime-env
agents, still listening). This watchdog, started by the driver in a session of its own, records the
driver's descendants while the driver lives, and when it is gone stops those still alive (and their
own children): SIGTERM, then SIGKILL after 10 s. A process is recognised by pid and start time, so a
recycled pid is never touched.
"""

from __future__ import annotations

import sys
import time


def watch(driver_pid: int, poll_s: float = 1.0) -> int:
    import os

    import psutil

    try:
        driver = psutil.Process(driver_pid)
    except psutil.NoSuchProcess:
        return 0
    known: dict[int, float] = {}
    while True:
        try:
            if not driver.is_running() or driver.status() == psutil.STATUS_ZOMBIE:
                break
            for p in driver.children(recursive=True):
                if p.pid != os.getpid():
                    known.setdefault(p.pid, p.create_time())
        except psutil.NoSuchProcess:
            break
        time.sleep(poll_s)
    left = []
    for pid, started in known.items():
        try:
            p = psutil.Process(pid)
            if p.create_time() == started:
                left += [p, *p.children(recursive=True)]
        except psutil.NoSuchProcess:
            pass
    for p in left:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(left, timeout=10)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    return len(left)


def start(driver_pid: int) -> None:
    """Start the watchdog of ``driver_pid`` in a session of its own (no terminal signals reach it)."""
    import subprocess

    subprocess.Popen(
        [sys.executable, "-m", "ipg.cluster.watchdog", str(driver_pid)],
        start_new_session=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


if __name__ == "__main__":
    sys.exit(0 if watch(int(sys.argv[1])) >= 0 else 1)
