"""Retention: the policy rules, and the pruner that applies them.

Rules (pure, tested in ``tests/unit/test_retention.py``): a channel's
effective policy is its own setting where it has one, else the server's
default (``--retention-max-age``, ``--retention-max-events``), each value
on its own; :func:`effective` says which applies and where it comes from.

The pruner (:class:`Pruner`, one per server process): every
``--retention-interval`` seconds it takes or renews the pruner's lease (one
row on the database's clock: only one process prunes at a time; another
takes over within three intervals of its death) and, while it holds it,
runs its *prune steps* in order.  The first step deletes events: for each
channel with events past its policy (:meth:`RetentionStore.due`), a batch
of at most :data:`PRUNE_BATCH` events at a time, each batch one short
transaction (:meth:`RetentionStore.prune`) that takes no lock a publish
needs.  Other steps may be added (:attr:`Pruner.steps`): anything with a
time window to enforce belongs to the same round and the same lease.

Guarantees (see :mod:`eventbus.storage.retention` for how): ids are never
reused and what a channel stores stays gapless, so ``first_id`` only moves
forward; an event a durable consumer holds on an unexpired lease is never
deleted (nor anything after it); consumers count what they lose.

Layer rule: a domain module; no SQL (it goes through the retention store),
no HTTP.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger

from eventbus.errors import InvalidInput, Unavailable
from eventbus.metrics import PerContext
from eventbus.model import Retention, json_integer
from eventbus.storage.retention import Due, RetentionStore

log = Logger()

#: Bounds of a policy (``--retention-*`` and a channel's settings): at
#: least one second (to keep nothing, delete the channel's consumers
#: instead) and one event; at most ten years.
MIN_MAX_AGE_S = 1.0
MAX_MAX_AGE_S = 315_360_000.0
MIN_MAX_EVENTS = 1
MAX_MAX_EVENTS = 2**63 - 1
#: Most events one pruning transaction deletes: it holds its channel's
#: consumers for that long, and nothing else.
PRUNE_BATCH = 1000
#: The pruner's lease lasts this many rounds (renewed every round).
LEASE_ROUNDS = 3

#: Where a value of an effective policy comes from.
FROM_CHANNEL = "channel"
FROM_SERVER = "server"

#: A step of a pruning round: deletes what it is responsible for, returns
#: how many rows it deleted.
PruneStep = Callable[[], Awaitable[int]]


def check_max_age(value: object, name: str = "max_age", nullable: bool = True) -> float:
    """A ``max_age`` within bounds (a number of seconds), or InvalidInput naming ``name``."""
    number = not isinstance(value, bool) and isinstance(value, (int, float))
    if not number or not MIN_MAX_AGE_S <= value <= MAX_MAX_AGE_S:  # type: ignore[operator]
        raise InvalidInput(
            f"{name} must be a number of seconds from {MIN_MAX_AGE_S:.0f} to {MAX_MAX_AGE_S:.0f}"
            + (
                " or null (the server's default); to keep nothing, delete the channel's consumers instead"
                if nullable
                else ""
            )
        )
    return float(value)  # type: ignore[arg-type]


def check_max_events(value: object, name: str = "max_events", nullable: bool = True) -> int:
    """A ``max_events`` within bounds (an integer), or InvalidInput naming ``name``."""
    number = json_integer(value)
    if number is None or not MIN_MAX_EVENTS <= number <= MAX_MAX_EVENTS:
        raise InvalidInput(
            f"{name} must be an integer from {MIN_MAX_EVENTS} to {MAX_MAX_EVENTS}"
            + (" or null (the server's default)" if nullable else "")
        )
    return number


def effective(settings: Retention, defaults: Retention) -> tuple[Retention, dict[str, str]]:
    """The policy that applies to a channel, and where each value comes from."""
    max_age, age_from = settings.max_age_s, FROM_CHANNEL
    if max_age is None:
        max_age, age_from = defaults.max_age_s, FROM_SERVER
    max_events, events_from = settings.max_events, FROM_CHANNEL
    if max_events is None:
        max_events, events_from = defaults.max_events, FROM_SERVER
    return Retention(max_age, max_events), {"max_age": age_from, "max_events": events_from}


class _LostLead(Exception):
    """Another process holds the pruner's lease now."""


class Pruner(service.Service):
    """Deletes what retention allows, in one process at a time."""

    name = "retention"

    def __init__(
        self,
        reactor: Any,
        store: RetentionStore,
        defaults: Retention,
        interval: float,
        batch: int = PRUNE_BATCH,
        pruned: PerContext | None = None,
    ) -> None:
        """``pruned``: where the events deleted are counted."""
        self.reactor = reactor
        self.pruned = pruned if pruned is not None else PerContext(by_context=False)
        self.store = store
        self.defaults = defaults
        self.interval = interval
        self.lease_s = interval * LEASE_ROUNDS
        self.batch = batch
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        # ---------------------------------------------------------------
        # HOOK: the prune steps of a round, run in this order by the process
        # holding the lease.  A feature with stored data to expire (e.g. the
        # idempotency keys of --idempotency-window) appends its step here
        # from eventbus.tap: ``pruner.steps.append(store.prune_expired)``.
        # ---------------------------------------------------------------
        self.steps: list[PruneStep] = [self.prune_events]
        self._loop: task.LoopingCall | None = None
        self._round: defer.Deferred[None] | None = None
        self._stopping = False
        self._renewed = 0.0
        #: Whether this process held the lease at its last round (for tests, health).
        self.leading = False

    # -- life cycle ----------------------------------------------------------------
    def startService(self) -> None:
        super().startService()
        self._stopping = False
        self._loop = task.LoopingCall(self.round_soon)
        self._loop.clock = self.reactor
        self._loop.start(self.interval, now=True)

    def stopService(self) -> defer.Deferred:
        super().stopService()
        return defer.ensureDeferred(self._stop())

    async def _stop(self) -> None:
        self._stopping = True
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if self._round is not None:
            await self._round
        if self.leading:
            try:
                await self.store.release(self.owner)
            except Exception as e:
                log.warn("could not release the pruner's lease ({error})", error=e)
            self.leading = False

    # -- rounds ----------------------------------------------------------------------
    def round_soon(self) -> None:
        """Run a round now, unless one is under way."""
        if self._round is None and not self._stopping:
            self._round = defer.ensureDeferred(self._run_round())
            self._round.addBoth(self._round_done)

    def _round_done(self, _: Any) -> None:
        self._round = None

    async def _run_round(self) -> None:
        try:
            await self._renew()
            for step in list(self.steps):
                if self._stopping:
                    break
                await step()
        except _LostLead:
            pass
        except Unavailable as e:
            log.warn("retention round stopped: {error}", error=e.message)
        except Exception:
            log.failure("retention round failed")

    async def _renew(self) -> None:
        lead = await self.store.lead(self.owner, self.lease_s)
        if lead != self.leading:
            log.info("{what} pruning for retention", what="now" if lead else "no longer")
        self.leading = lead
        self._renewed = self.reactor.seconds()
        if not lead:
            raise _LostLead()

    async def prune_events(self) -> int:
        """The first step: for each channel past its policy, delete batch
        after batch up to its target; returns how many events went."""
        deleted = 0
        due = await self.store.due(self.defaults)
        for channel in due:
            deleted += await self._prune_channel(channel)
            if self._stopping:
                break
        if deleted:
            log.info("retention deleted {n} events from {channels} channels", n=deleted, channels=len(due))
        return deleted

    async def _prune_channel(self, due: Due) -> int:
        deleted = 0
        pruned_to = due.pruned_to
        while pruned_to < due.target and not self._stopping:
            if self.reactor.seconds() - self._renewed >= self.interval:
                await self._renew()
            upto = min(due.target, pruned_to + self.batch)
            reached, count = await self.store.prune(due, upto)
            deleted += count
            self.pruned.add(due.context, count)
            if reached < upto:
                break  # a consumer holds a lease on the next event
            pruned_to = reached
        return deleted
