"""An open subscription (``stream``, ``monitor`` or ``query``) as the caller sees it.

``rpc.hub`` puts the records its reader thread routes here; the caller iterates or
calls ``get(timeout)`` and ends it with ``stop()``. The buffer is bounded: past
``STREAM_BUFFER`` records new ones are dropped and counted, but never the end marker or
an error, which are what unblock the reader. This module does no I/O itself: it asks
its hub (any ``StreamHub``-like owner) to stop the subscription or to respond.
"""

from __future__ import annotations

import contextlib
import queue
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from serfbridge.rpc.events import Reply
from serfbridge.rpc.models import StreamItem

#: Items a stream buffers locally before it drops (the agent itself buffers 512).
STREAM_BUFFER = 10_000


class StreamOwner(Protocol):
    """What a stream needs from the connection that carries it (``rpc.hub.StreamHub``)."""

    def request(self, command: str, body: Mapping[str, object] | None) -> Reply: ...

    def stop(self, stream: Stream) -> None: ...


class _End:
    """The end marker: the stream was stopped or closed, or its query is done."""


END = _End()
Buffered = StreamItem | _End | BaseException


@dataclass(eq=False)
class Stream(Iterator[StreamItem]):
    """An open subscription: iterate it (blocking) or ``get(timeout)``; ``stop()`` ends it."""

    hub: StreamOwner
    command: str
    body: Mapping[str, object]
    seq: int = -1
    dropped: int = 0
    _queue: queue.Queue[Buffered] = field(default_factory=lambda: queue.Queue(STREAM_BUFFER))
    _done: bool = False

    def __iter__(self) -> Iterator[StreamItem]:
        return self

    def __next__(self) -> StreamItem:
        item = self._take(None)
        if item is None:
            raise StopIteration
        return item

    @property
    def done(self) -> bool:
        """True once the stream has ended (stopped, closed, or a query's ``done``)."""
        return self._done

    def get(self, timeout: float | None = None) -> StreamItem | None:
        """The next item, or None on timeout or when the stream has ended."""
        try:
            return self._take(timeout)
        except queue.Empty:
            return None

    def _take(self, timeout: float | None) -> StreamItem | None:
        if self._done:
            return None
        item = self._queue.get(timeout=timeout)
        if isinstance(item, _End):
            self._done = True
            return None
        if isinstance(item, BaseException):
            self._done = True
            raise item
        return item

    def put(self, item: Buffered) -> None:
        """Buffer an item; a full buffer drops records, but never the end or an error.

        The end marker and an exception are what unblock the reader, so when the buffer
        is full they push out the oldest record instead (counted in ``dropped``).
        """
        final = isinstance(item, _End | BaseException)
        while True:
            try:
                self._queue.put_nowait(item)
                return
            except queue.Full:
                if not final:
                    self.dropped += 1
                    return
            # Count an eviction only if it took a record: the reader may have emptied the
            # buffer in the meantime, and then the retry simply fits.
            with contextlib.suppress(queue.Empty):
                self._queue.get_nowait()
                self.dropped += 1

    def end(self) -> None:
        """Mark the stream ended (the hub calls this; callers use ``stop``)."""
        self.put(END)

    def respond(self, query_id: int, payload: bytes) -> None:
        """Answer a query this stream saw (same connection, before its deadline)."""
        self.hub.request("respond", {"ID": query_id, "Payload": payload}).raise_for_error()

    def stop(self) -> None:
        """Stop the subscription; records still buffered by the agent are discarded."""
        self.hub.stop(self)
        self.end()

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
