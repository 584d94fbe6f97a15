"""ZeroMQ plumbing shared by the broker and the clients: the libzmq version gate and socket setup.

This module owns the few facts about libzmq that both ends rely on: the minimum version, how an
endpoint needs IPv6 switched on, closing sockets without lingering, waking a poll loop, and the
life cycle of a bound service (:class:`Service`: its context, its sockets, binding with a clear
error, closing). It knows nothing of the zchat protocol.
"""

from __future__ import annotations

import contextlib
import secrets
import socket as stdsocket
from dataclasses import dataclass
from types import TracebackType
from typing import Self

import zmq

from zchat.errors import ZChatError

__all__ = [
    "MIN_LIBZMQ",
    "NOBLOCK",
    "Curve",
    "Service",
    "Waker",
    "bind",
    "connect",
    "new_route",
    "require_libzmq",
    "socket",
]

#: ``zmq.NOBLOCK`` as a plain int: pyzmq converts enum flags on every call, which costs more
#: than the receive itself on a hot path (measured: 6.5 µs vs 2.5 µs per recv_multipart).
NOBLOCK = int(zmq.NOBLOCK)

#: 4.3.5 fixes the CVEs of older libzmq and is what the tests run against.
MIN_LIBZMQ = (4, 3, 5)


def require_libzmq() -> None:
    """Refuse to run on a libzmq older than :data:`MIN_LIBZMQ`."""
    have = zmq.zmq_version_info()
    if have < MIN_LIBZMQ:
        need = ".".join(map(str, MIN_LIBZMQ))
        raise ZChatError(f"zchat needs libzmq >= {need}; pyzmq here uses {zmq.zmq_version()}")


@dataclass(frozen=True)
class Curve:
    """A client's CURVE setup: the broker's public key and the client's own keypair (z85)."""

    server_key: str
    public: str
    secret: str


def socket(
    ctx: zmq.Context[zmq.Socket[bytes]], kind: int, endpoint: str, curve: Curve | None = None, **options: int
) -> zmq.Socket[bytes]:
    """A socket of ``kind`` with ``options`` set (``LINGER`` 0 unless given), IPv6 on if the
    endpoint needs it, and CURVE as a client if ``curve`` is given. The caller binds or
    connects it."""
    sock = ctx.socket(kind)
    if curve is not None:
        sock.curve_serverkey = curve.server_key.encode("ascii")
        sock.curve_publickey = curve.public.encode("ascii")
        sock.curve_secretkey = curve.secret.encode("ascii")
    sock.setsockopt(zmq.LINGER, options.pop("LINGER", 0))
    if endpoint.startswith("tcp://["):
        sock.setsockopt(zmq.IPV6, 1)
    for name, value in options.items():
        sock.setsockopt(getattr(zmq, name), value)
    return sock


def new_route() -> bytes:
    """A routing id for a DEALER: 16 random bytes, the first never zero (libzmq's own ids start
    with a zero byte and count up, so anyone can guess them; a broker routes a session's private
    traffic to its id, so it must be unguessable)."""
    route = secrets.token_bytes(16)
    return bytes([route[0] | 1]) + route[1:]


def bind(sock: zmq.Socket[bytes], endpoint: str) -> str:
    """Bind ``sock``; returns the endpoint as bound (``*`` ports resolved). A failure names the
    endpoint, so the operator reads which of several addresses is taken."""
    try:
        sock.bind(endpoint)
    except zmq.ZMQError as exc:
        raise zmq.ZMQError(exc.errno, f"cannot bind {endpoint}: {exc.strerror}") from None
    bound = sock.getsockopt(zmq.LAST_ENDPOINT)
    assert isinstance(bound, bytes)
    return bound.decode()


def connect(sock: zmq.Socket[bytes], endpoint: str) -> None:
    """Connect ``sock``. A failure (an endpoint libzmq cannot parse) names the endpoint, as
    :func:`bind` does, not only "Invalid argument"."""
    try:
        sock.connect(endpoint)
    except zmq.ZMQError as exc:
        raise zmq.ZMQError(exc.errno, f"cannot connect to {endpoint}: {exc.strerror}") from None


class Service:
    """A ZeroMQ service run by one thread (a broker, a relay): it owns its context unless one is
    injected, and the sockets it makes with :meth:`_socket`, closed by :meth:`close` (also on
    leaving a ``with`` block, also when binding failed half-way). Subclasses bind in
    :meth:`bind` and serve in ``run()`` until :meth:`stop`."""

    def __init__(self, context: zmq.Context[zmq.Socket[bytes]] | None = None) -> None:
        require_libzmq()
        self._own_context = context is None
        self._ctx = context or zmq.Context()
        self._sockets: list[zmq.Socket[bytes]] = []

    def __enter__(self) -> Self:
        try:
            self.bind()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def bind(self) -> object:
        raise NotImplementedError

    def stop(self) -> None:
        """Make ``run()`` return. Must be safe from a signal handler and from another thread."""
        raise NotImplementedError

    def _socket(self, kind: int, endpoint: str, curve: Curve | None = None, **options: int) -> zmq.Socket[bytes]:
        """A socket (see :func:`socket`) that :meth:`close` will close."""
        sock = socket(self._ctx, kind, endpoint, curve, **options)
        self._sockets.append(sock)
        return sock

    def close(self) -> None:
        for sock in self._sockets:
            sock.close()
        self._sockets.clear()
        if self._own_context:
            self._ctx.term()
            self._own_context = False


class Waker:
    """Wakes a poll loop from a signal handler or another thread: a byte on a socket pair whose
    read end the loop polls next to its ZeroMQ sockets (which only the loop may touch)."""

    def __init__(self) -> None:
        self._r, self._w = stdsocket.socketpair()
        self._r.setblocking(False)
        self._w.setblocking(False)

    def fileno(self) -> int:
        return self._r.fileno()

    def wake(self) -> None:
        # BlockingIOError: a wake-up is already pending; OSError: the loop is closed.
        with contextlib.suppress(BlockingIOError, OSError):
            self._w.send(b"x")

    def close(self) -> None:
        self._r.close()
        self._w.close()
