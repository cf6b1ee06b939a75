"""A headless Debian chromium driven by Playwright (sync API) from one worker thread.

Playwright's sync API must be used from the thread that started it, so one thread owns
the browser and runs every call a test hands it (``await browser.run(fn)``: ``fn(b)``
runs there with the ``playwright`` Browser ``b``). No ``playwright install``: the
browser is ``/usr/bin/chromium``. ``start_error()`` says why it cannot run, if so.
"""

from __future__ import annotations

import concurrent.futures
import os
import queue
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"


class BrowserThread:
    def __init__(self) -> None:
        self._calls: queue.Queue[Any] = queue.Queue()
        self._started = concurrent.futures.Future[None]()
        self._thread = threading.Thread(target=self._main, name="chromium", daemon=True)

    def start(self, timeout: float = 60.0) -> str | None:
        """Launch; None when the browser runs, else the reason it does not."""
        if not os.access(CHROMIUM, os.X_OK):
            return f"{CHROMIUM} not found (apt-get install chromium)"
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError as exc:
            return f"playwright is not installed ({exc}); pip install playwright"
        self._thread.start()
        try:
            self._started.result(timeout)
        except Exception as exc:  # noqa: BLE001 - any launch failure means: skip
            return f"chromium did not launch: {type(exc).__name__}: {str(exc)[:300]}"
        return None

    def _main(self) -> None:
        from playwright.sync_api import sync_playwright

        try:
            manager = sync_playwright().start()
            try:
                browser = manager.chromium.launch(
                    executable_path=CHROMIUM, headless=True, args=ARGS, timeout=30000
                )
            except BaseException:
                manager.stop()
                raise
        except BaseException as exc:  # noqa: BLE001 - reported to start()
            self._started.set_exception(exc)
            return
        self._started.set_result(None)
        try:
            while True:
                item = self._calls.get()
                if item is None:
                    break
                fn, future = item
                try:
                    future.set_result(fn(browser))
                except BaseException as exc:  # noqa: BLE001 - handed to the caller
                    future.set_exception(exc)
        finally:
            browser.close()
            manager.stop()

    async def run(self, fn: Callable[[Any], Any]) -> Any:
        """``fn(browser)`` in the browser thread; its result (or exception)."""
        future = concurrent.futures.Future[Any]()
        self._calls.put((fn, future))
        return await trio.to_thread.run_sync(future.result)

    def stop(self) -> None:
        if self._thread.is_alive():
            self._calls.put(None)
            self._thread.join(30)
