"""Shared by every test: the guard against async tests that never run.

Every ``async def`` test must be wrapped by ``pytest_twisted.ensureDeferred``
(see the collection hook below), so none can silently pass without running.
"""
from __future__ import annotations

import inspect
import itertools
from pathlib import Path

import pytest


_names = itertools.count(1)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        fn = getattr(item, "obj", None)
        marked = getattr(fn, "_pytest_twisted_mark", None) == "async_test"
        if fn is not None and inspect.iscoroutinefunction(fn) and not marked:
            raise pytest.UsageError(
                f"{item.nodeid} is a bare coroutine: decorate it with "
                "@pytest_twisted.ensureDeferred so it really runs"
            )


@pytest.fixture
def channel_name(request: pytest.FixtureRequest) -> str:
    """A channel name no other test uses (tests share one database)."""
    base = "".join(c if c.isalnum() else "_" for c in request.node.name)[:80]
    return f"{base}-{next(_names)}"


def pytest_report_header() -> str:
    return f"eventbus tests; repository at {Path(__file__).parent.parent}"
