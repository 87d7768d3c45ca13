"""Who holds a lease: a worker's id, and which owners on this host are no longer alive."""
from __future__ import annotations

import os
import socket
import uuid


def worker_id() -> str:
    """host:pid:nonce — a worker on the same host can tell when the owner of a lease is dead."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def dead_local_owners(owners: list[str]) -> list[str]:
    host, dead = socket.gethostname(), []
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
