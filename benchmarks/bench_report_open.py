"""How big the demo's reports are and how long each takes to open in headless Chromium.

    .venv/bin/python benchmarks/bench_report_open.py reports/demo

Prints the size of every HTML file, their total, and the time from navigation to the load
event (median of 3 opens) in Debian's chromium driven by Playwright; counts any request that
is not a local file.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def main(folder: Path) -> None:
    from playwright.sync_api import sync_playwright

    folder = folder.resolve()
    pages = sorted(folder.rglob("*.html"))
    total = sum(p.stat().st_size for p in pages)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
        for path in pages:
            times, outside = [], []
            for _ in range(3):
                page = browser.new_page()
                page.on("request", lambda r: outside.append(r.url) if not r.url.startswith("file://") else None)
                started = time.perf_counter()
                page.goto(path.as_uri(), wait_until="load")
                times.append(time.perf_counter() - started)
                page.close()
            print(f"{path.relative_to(folder)!s:32s} {path.stat().st_size / 1024:7.1f} KiB  "
                  f"open {1000 * statistics.median(times):6.1f} ms  non-file requests: {len(outside)}")
        browser.close()
    print(f"total {len(pages)} pages, {total / 1024 / 1024:.2f} MiB")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "reports/demo"))
