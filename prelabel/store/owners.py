"""Who holds a lease: a worker's id, and which owners on this host are no longer alive.

An owner id is ``host:pid:nonce``. The host is the machine's name unless the process is given a
host identity of its own (``--host-id``, ``$PRELABEL_HOST_ID``, read by the CLI): then several
processes on one machine act as separate hosts (tests, benchmarks), and the pid check, which only
means something between processes of one host, does not apply between them: another host's lease
is taken over only when it expires.
"""
from __future__ import annotations

import os
import re
import socket
import uuid

HOST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

_host: str | None = None  # this process's host identity; None: the machine's name


def set_host_id(host: str | None) -> None:
    """Act as host ``host`` (None: the machine's name) from now on. Called once, by the CLI."""
    global _host
    if host is not None and not HOST_ID.fullmatch(host):
        raise ValueError(f"host id {host!r}: 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")
    _host = host


def host_id() -> str:
    return _host if _host is not None else socket.gethostname()


def worker_id() -> str:
    """host:pid:nonce — a worker on the same host can tell when the owner of a lease is dead."""
    return f"{host_id()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def dead_local_owners(owners: list[str]) -> list[str]:
    """The owners of this host (by host identity, not by machine) whose process is gone."""
    host, dead = host_id(), []
    for owner in owners:
        parts = owner.rsplit(":", 2)
        if len(parts) != 3 or parts[0] != host or not parts[1].isdigit():
            continue
        try:
            os.kill(int(parts[1]), 0)
        except ProcessLookupError:
            dead.append(owner)
            continue
        except PermissionError:
            pass  # alive, someone else's
        if _zombie(int(parts[1])):  # killed, not yet reaped by its parent: gone all the same
            dead.append(owner)
    return dead


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except (OSError, IndexError):
        return False  # no /proc (not Linux): the signal check alone
