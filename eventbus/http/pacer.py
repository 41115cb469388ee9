"""Flow control for long responses (history arrays, SSE streams).

A streaming handler registers a :class:`Pacer` on its request and awaits
:meth:`Pacer.ready` before each database read, so it reads as fast as the
client reads and no faster: the database is the buffer, and a slow client
costs at most one page of memory.

Layer rule: the HTTP layer; knows nothing of events or SQL.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer


@implementer(IPushProducer)
class Pacer:
    """Push producer registered on a stream's request.

    The transport pauses it when its write buffer fills and resumes it when
    the buffer is empty again; the stream loop awaits :meth:`ready` before
    every store read, so it reads as fast as the client reads and no faster.
    """

    def __init__(self) -> None:
        self._paused: defer.Deferred | None = None
        self.stopped = False
        #: Paused or stopped: nothing should be written now.  A plain
        #: attribute, as a broadcast checks it for every stream per write.
        self.held = False

    @property
    def paused(self) -> bool:
        return self._paused is not None

    def pauseProducing(self) -> None:
        if self._paused is None:
            self._paused = defer.Deferred()
        self.held = True

    def resumeProducing(self) -> None:
        paused, self._paused = self._paused, None
        self.held = self.stopped
        if paused is not None and not self.stopped:
            paused.callback(None)

    def stopProducing(self) -> None:
        # The connection is gone.  The transport tells us just before the
        # request learns it, in the same call, and the request's
        # notifyFinish then cancels the handler; resuming here would only run
        # the loop once more against a dead connection.
        self.stopped = True
        self.held = True

    def ready(self) -> defer.Deferred:
        """Fires when the client has drained what it was sent.

        Once stopped, never fires: the handler is being cancelled.
        """
        if self.stopped:
            return defer.Deferred()
        if self._paused is not None:
            return self._paused
        return defer.succeed(None)
