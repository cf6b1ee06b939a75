from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.browser.browser import BrowserThread


@pytest.fixture(scope="module")
def browser() -> Iterator[BrowserThread]:
    thread = BrowserThread()
    reason = thread.start()
    if reason is not None:
        print(f"SKIP browser tests: {reason}")
        pytest.skip(reason)
    try:
        yield thread
    finally:
        thread.stop()
