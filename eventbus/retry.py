"""Waiting for the database to come back: one policy, one loop.

Everything that outlives a database outage (an open SSE stream, a webhook
delivery loop, the notifier's wake-up reads, start-up) retries through
:func:`retrying`, and every delay comes from a Twisted ``backoffPolicy``
(``attempt -> seconds``), so an outage is handled, logged and timed the same
way everywhere: one warning when it starts, one line when it ends.

Layer rule: the bottom tier, beside :mod:`eventbus.model` and
:mod:`eventbus.errors`; imports nothing else of ours.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from itertools import count
from typing import TypeVar

from twisted.application.internet import backoffPolicy
from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from eventbus.errors import Unavailable

log = Logger()

T = TypeVar("T")
#: ``policy(attempt)`` -> seconds to wait before the next attempt (attempt 0 first).
Policy = Callable[[int], float]


def _no_jitter() -> float:
    return 0.0


#: Waiting for the database from a running server: once a second, as the
#: README promises for SSE streams (so a stream resumes within a second of
#: the database's return, and a test with a fake clock knows when).
EVERY_SECOND: Policy = backoffPolicy(initialDelay=1.0, maxDelay=1.0, factor=1.0, jitter=_no_jitter)

#: Re-opening a lost database connection: quickly at first, then every 3 s.
RECONNECT: Policy = backoffPolicy(initialDelay=0.25, maxDelay=3.0, factor=2.0, jitter=_no_jitter)


def delays(policy: Policy) -> Iterator[float]:
    """The policy's delays as an endless iterator (what txpostgres' reconnection wants)."""
    return (policy(attempt) for attempt in count())


def sleep(reactor: IReactorTime, seconds: float) -> defer.Deferred[None]:
    """A cancellable pause on ``reactor``'s clock."""
    return task.deferLater(reactor, seconds, lambda: None)


async def retrying(
    reactor: IReactorTime,
    attempt: Callable[[], Awaitable[T]],
    *,
    what: str,
    policy: Policy = EVERY_SECOND,
    retry_on: tuple[type[BaseException], ...] = (Unavailable,),
    give_up_after: float | None = None,
    between: Callable[[], None] | None = None,
) -> T:
    """``await attempt()`` until it succeeds, waiting ``policy(n)`` after the
    n-th failure of a kind in ``retry_on``.

    ``what`` names the waiter in the log.  ``between`` runs before each
    pause (an SSE stream sends its keep-alives there).  With
    ``give_up_after`` seconds the last failure is raised once they have
    passed.  Other errors, and cancellation, propagate at once.
    """
    started = reactor.seconds()
    failures = 0
    while True:
        try:
            result = await attempt()
        except retry_on as e:
            if give_up_after is not None and reactor.seconds() - started >= give_up_after:
                raise
            if failures == 0:
                log.warn("{what} waits for the database: {error}", what=what, error=_describe(e))
            delay = policy(failures)
            failures += 1
        else:
            if failures:
                log.info("{what} resumes", what=what)
            return result
        if between is not None:
            between()
        await sleep(reactor, delay)


def _describe(e: BaseException) -> str:
    return getattr(e, "message", None) or str(e) or type(e).__name__
