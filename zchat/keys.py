"""Key files and the network-exposure rule: everything secure mode reads from disk.

This module owns where keys live (the config directory), writing a new CURVE keypair with
owner-only permissions (``zchat keygen``), reading a broker's public key given as z85 text or a
file, reading a client's or broker's keypair, and deciding whether an
endpoint is reachable from other machines. It opens no sockets; errors are one-line
:class:`ZChatError` messages for the command line.
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path

import click
import zmq.auth

from zchat.errors import ZChatError
from zchat.transport import Curve

__all__ = [
    "CONFIG_DIR",
    "client_curve",
    "is_local",
    "keygen",
    "load_keypair",
    "server_public_key",
]

CONFIG_DIR = Path(click.get_app_dir("zchat"))
_Z85_KEY = re.compile(r"[0-9a-zA-Z.\-:+=^!/*?&<>()\[\]{}@%$#]{40}")


def keygen(name: str, directory: Path = CONFIG_DIR, *, force: bool = False) -> tuple[Path, Path, str]:
    """Write ``name.key`` (public) and ``name.key_secret`` (both keys), mode 0600.

    Returns the two paths and the public key.
    """
    public, secret = directory / f"{name}.key", directory / f"{name}.key_secret"
    if not force and (public.exists() or secret.exists()):
        raise ZChatError(f"{secret} already exists: keep it, or pass --force to replace it")
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    # The umask makes the files owner-only from their first byte, not after a chmod.
    old = os.umask(0o077)
    try:
        for path in (public, secret):
            path.unlink(missing_ok=True)
        zmq.auth.create_certificates(str(directory), name)
    finally:
        os.umask(old)
    for path in (public, secret):
        path.chmod(0o600)
    return public, secret, load_keypair(public)[0]


def load_keypair(path: Path) -> tuple[str, str]:
    """``(public, secret)`` z85 keys from a key file (the secret is ``""`` in a public one)."""
    try:
        public, secret = zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as exc:
        raise ZChatError(f"cannot read the key file {path}: {exc}") from None
    return public.decode("ascii"), (secret or b"").decode("ascii")


def server_public_key(value: str) -> str:
    """The broker's public key from ``value``: 40 z85 characters, or a key file's path."""
    if _Z85_KEY.fullmatch(value):
        return value
    path = Path(value).expanduser()
    if not path.exists():
        raise ZChatError(f"--server-key is neither a 40-character z85 key nor a file: {value!r}")
    return load_keypair(path)[0]


def client_curve(server_key: str | None, key_file: Path) -> Curve | None:
    """The CURVE setup of a client, or None without a server key (open mode)."""
    if server_key is None:
        return None
    if not key_file.exists():
        raise ZChatError(f"no client key at {key_file}: run 'zchat keygen' first (or pass --key)")
    public, secret = load_keypair(key_file)
    if not secret:
        raise ZChatError(f"{key_file} holds no secret key: pass the .key_secret file")
    return Curve(server_public_key(server_key), public, secret)


def is_local(endpoint: str) -> bool:
    """Whether only this machine can reach ``endpoint`` (loopback TCP, ipc, inproc)."""
    if not endpoint.startswith("tcp://"):
        return endpoint.startswith(("ipc://", "inproc://"))
    host = endpoint.removeprefix("tcp://").rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # '*', an interface name or a host name: assume it faces the network
