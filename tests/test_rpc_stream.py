"""Unit tests for ``rpc.stream.Stream``'s buffer: no agent, no socket.

``_FakeHub`` is a FAKE of the client's stream hub (``rpc.hub``), standing in only for the
``stop`` call; the stream's buffer is what is under test. The same stop with a full
buffer, end to end through a fake agent: ``test_rpc_client_fake``.
"""

from __future__ import annotations

import threading

from serfbridge.rpc.stream import STREAM_BUFFER, Stream


class _FakeHub:
    def __init__(self) -> None:
        self.stopped: list[Stream] = []

    def stop(self, stream: Stream) -> None:
        self.stopped.append(stream)


def _stream() -> tuple[Stream, _FakeHub]:
    hub = _FakeHub()
    return Stream(hub=hub, command="stream", body={}), hub  # type: ignore[arg-type]


def _drain_in_thread(stream: Stream) -> tuple[threading.Thread, list[object]]:
    got: list[object] = []
    reader = threading.Thread(target=lambda: got.extend(stream), daemon=True)
    reader.start()
    return reader, got


def test_stop_with_a_full_buffer_ends_the_reader() -> None:
    stream, hub = _stream()
    for i in range(STREAM_BUFFER):
        stream.put({"n": i})
    stream.stop()
    reader, got = _drain_in_thread(stream)
    reader.join(5)
    assert not reader.is_alive(), "the reader blocked: the end marker was dropped"
    assert hub.stopped == [stream]
    # The oldest record made room for the end; the newest are all there, in order.
    assert stream.dropped == 1
    assert got == [{"n": i} for i in range(1, STREAM_BUFFER)]
    assert stream.done


def test_an_error_on_a_full_buffer_reaches_the_reader() -> None:
    stream, _ = _stream()
    for i in range(STREAM_BUFFER):
        stream.put({"n": i})
    stream.put(OSError("connection lost"))
    seen = 0
    try:
        for _ in stream:
            seen += 1
    except OSError as exc:
        assert str(exc) == "connection lost"
    else:
        raise AssertionError("the error was dropped")
    assert seen == STREAM_BUFFER - 1
    assert stream.done


def test_records_past_a_full_buffer_are_dropped_and_counted() -> None:
    stream, _ = _stream()
    for i in range(STREAM_BUFFER + 3):
        stream.put({"n": i})
    assert stream.dropped == 3
    assert stream.get(0) == {"n": 0}  # the first records are kept, the overflow is not


def test_end_on_a_buffer_with_room_keeps_every_record() -> None:
    stream, _ = _stream()
    for i in range(3):
        stream.put({"n": i})
    stream.stop()
    assert list(stream) == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert stream.dropped == 0
