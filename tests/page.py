"""Open a run's report.html in headless Chromium (Debian's package; no browser download) with every
network request blocked and recorded, and every console error and page error collected.

The browser tier uses it; it also takes the screenshots in docs/results:

    .venv/bin/python tests/page.py runs/organism docs/results/organism-report.png [--element .card]
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path


def chromium() -> str | None:
    """The Chromium executable: $IPG_CHROMIUM, or Debian's ``chromium`` on the PATH."""
    return os.environ.get("IPG_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


@contextmanager
def opened(report: Path, width: int = 1280, height: int = 900):
    """Yield ``(page, problems)``: the loaded page, and a list that collects console errors, page errors and
    any request that leaves the file (the page must need nothing but itself)."""
    from playwright.sync_api import sync_playwright

    url = report.resolve().as_uri()
    problems: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": width, "height": height})

            def route(r):
                if r.request.url != url and not r.request.url.startswith("data:"):
                    problems.append(f"request: {r.request.url}")
                    return r.abort()
                return r.continue_()

            page.route("**/*", route)
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.goto(url, wait_until="load")
            yield page, problems
        finally:
            browser.close()


def screenshot(run_dir: Path, out: Path, full: bool = False, element: str | None = None) -> list[str]:
    """A screenshot of the report's first screen (``full``: the whole page; ``element``: the first element that
    a CSS selector finds, e.g. ``.card``); the page's problems."""
    with opened(run_dir / "report.html") as (page, problems):
        out.parent.mkdir(parents=True, exist_ok=True)
        if element:
            page.locator(element).first.screenshot(path=str(out))
        else:
            page.screenshot(path=str(out), full_page=full)
    return problems


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="screenshot a run's report.html in headless Chromium")
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--full", action="store_true", help="the whole page")
    ap.add_argument("--element", help="the first element this CSS selector finds")
    args = ap.parse_args()
    found = screenshot(args.run_dir, args.out, args.full, args.element)
    print("\n".join(found) or f"wrote {args.out}")
