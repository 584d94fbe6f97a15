"""libzmq devices in threads, so that C and not Python moves the bench's own messages.

A Python loop costs ~1–3 µs a message, a libzmq device well under one: on a 2-core machine the
load generator must not be what limits the proxy it measures. Two devices, both
``zmq.proxy_steerable`` in a thread of the worker, steered and counted over an inproc PAIR
(libzmq's ``STATISTICS`` and ``TERMINATE`` commands):

- :class:`Replay`, a publisher's source: messages built before the clock wait in an inproc pipe
  with no high-water mark; on :meth:`Device.start` the device sends them to the broker as fast as
  the broker takes them (blocking when it pushes back, as PUSH does).
- :class:`Counter`, a subscriber's sink: a SUB socket whose messages the device counts and
  drops into a PUB that has no peer.

This module knows nothing of what the messages say.
"""

from __future__ import annotations

import contextlib
import itertools
import struct
import threading
from dataclasses import dataclass

import zmq

from benchmarks.fleet import BenchError, Ctx, Sock

#: How long a device may take to answer a command (it answers between two bursts of at most
#: 1 000 messages, libzmq's proxy_burst_size).
COMMAND_TIMEOUT_MS = 5_000

_ids = itertools.count()


@dataclass(frozen=True)
class Counts:
    """libzmq's proxy statistics: frames in at the frontend and out at the backend. (libzmq
    4.3.5 counts every frame, although zmq_proxy_steerable(3) says a multipart message counts
    once: divide by the frames per message.)"""

    frontend_in: int
    backend_out: int


class Device:
    """``zmq.proxy_steerable(frontend, backend)`` in a daemon thread, steered over an inproc PAIR.

    From :meth:`start` until :meth:`stop` returned, no other thread may touch ``frontend`` or
    ``backend``. :meth:`stop` closes the sockets the device made, not the caller's: a PUSH
    closed now would drop what it still holds."""

    def __init__(self, ctx: Ctx, frontend: Sock, backend: Sock) -> None:
        endpoint = f"inproc://device-{next(_ids)}"
        self._ctl = ctx.socket(zmq.PAIR)
        self._ctl.setsockopt(zmq.LINGER, 0)
        self._ctl.bind(endpoint)
        self._peer = ctx.socket(zmq.PAIR)
        self._peer.setsockopt(zmq.LINGER, 0)
        self._peer.connect(endpoint)
        self._front, self._back = frontend, backend
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.error: str | None = None

    def _run(self) -> None:
        try:
            zmq.proxy_steerable(self._front, self._back, None, self._peer)
        except zmq.ZMQError as exc:  # e.g. a send that timed out (SNDTIMEO): the broker is gone
            self.error = f"{type(exc).__name__}: {exc}"

    def start(self) -> None:
        self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def counts(self) -> Counts:
        """The device's counters (a round trip to its thread, ~0.1 ms)."""
        if not self._thread.is_alive():
            raise BenchError(f"a device stopped: {self.error}")
        self._ctl.send(b"STATISTICS")
        if not self._ctl.poll(COMMAND_TIMEOUT_MS):
            raise BenchError("a device did not answer STATISTICS")
        values = [struct.unpack("=Q", f)[0] for f in self._ctl.recv_multipart()]
        return Counts(frontend_in=values[0], backend_out=values[6])

    def stop(self, timeout: float = 5.0) -> None:
        """End the device and close its sockets (a device stuck in a blocking send ends when its
        socket's SNDTIMEO expires)."""
        if self._thread.is_alive():
            with contextlib.suppress(zmq.ZMQError):
                self._ctl.send(b"TERMINATE", zmq.NOBLOCK)
            self._thread.join(timeout)
        if self._thread.is_alive():
            raise BenchError("a device did not stop")
        self._ctl.close(linger=0)
        self._peer.close(linger=0)


class Replay(Device):
    """Messages of ``frames`` frames each, queued now (:meth:`queue`, before the clock), sent to
    ``out`` by the device."""

    def __init__(self, ctx: Ctx, out: Sock, frames: int) -> None:
        endpoint = f"inproc://replay-{next(_ids)}"
        self._in = ctx.socket(zmq.PUSH)
        self._in.setsockopt(zmq.SNDHWM, 0)  # both ends at 0: the inproc pipe has no limit
        self._in.setsockopt(zmq.LINGER, 0)
        self._in.bind(endpoint)
        self._queue = ctx.socket(zmq.PULL)
        self._queue.setsockopt(zmq.RCVHWM, 0)
        self._queue.setsockopt(zmq.LINGER, 0)
        self._queue.connect(endpoint)
        super().__init__(ctx, self._queue, out)
        self._more = int(zmq.SNDMORE)  # a plain int: pyzmq converts enum flags on every call
        self._frames = frames

    def queue(self, message: list[bytes]) -> None:
        assert len(message) == self._frames
        for frame in message[:-1]:
            self._in.send(frame, self._more)
        self._in.send(message[-1])

    def sent(self) -> int:
        """Messages the device has handed to ``out`` (its queue to the broker: SNDHWM and the
        kernel's socket buffers are all that is between them)."""
        return self.counts().backend_out // self._frames

    def stop(self, timeout: float = 5.0) -> None:
        super().stop(timeout)
        self._in.close(linger=0)
        self._queue.close(linger=0)


class Counter(Device):
    """A SUB socket whose every message (of ``frames`` frames) the device counts and drops."""

    def __init__(self, ctx: Ctx, sub: Sock, frames: int) -> None:
        self._drop = ctx.socket(zmq.PUB)  # never bound or connected: a send to it is dropped in C
        self._drop.setsockopt(zmq.LINGER, 0)
        super().__init__(ctx, sub, self._drop)
        self._frames = frames

    def received(self) -> int:
        return self.counts().frontend_in // self._frames

    def stop(self, timeout: float = 5.0) -> None:
        super().stop(timeout)
        self._drop.close(linger=0)
