"""A store call that lost its server is made again, whole, by its outermost call; a lock or a bug is not."""
from __future__ import annotations

import contextlib

import pytest

from prelabel.errors import StorageError
from prelabel.store import manager
from prelabel.store.manager import StoreManager, reconnect_delay


class Dropped(Exception):
    pass


class FlakyConnector:
    """Fails the first ``drops`` calls of ``fail_on`` as a lost connection would."""

    errors = (Dropped,)
    integrity_errors = ()
    location = "postgresql://test"

    def __init__(self, fail_on: str, drops: int, lost: bool = True) -> None:
        self.fail_on, self.drops, self.lost = fail_on, drops, lost
        self.calls: list[str] = []
        self.recovered = 0

    def translate(self, error):
        return StorageError(self.location, "cannot reach the server", "run it again")

    def disconnected(self, error) -> bool:
        return self.lost

    def recover(self) -> None:
        self.recovered += 1

    def churned(self, rows: int) -> None:
        pass

    @contextlib.contextmanager
    def transaction(self, wait_s=None):
        yield

    def one(self, query, /, **params):
        self.calls.append(query)
        if query == self.fail_on and self.drops:
            self.drops -= 1
            raise Dropped(query)
        return None

    def run(self, query, /, **params):
        self.one(query, **params)
        return 0

    def commit_with(self, query, /, **params):
        self.one(query, **params)
        return []


@pytest.fixture
def slept(monkeypatch):
    waits: list[float] = []
    monkeypatch.setattr(manager.time, "sleep", waits.append)
    return waits


def test_a_call_that_lost_its_server_is_made_again_with_backoff(slept):
    c = FlakyConnector("get_job", drops=3)
    assert StoreManager(c).get_job("j") is None
    assert c.calls == ["get_job"] * 4 and slept == [0.1, 0.2, 0.4] and c.recovered == 3
    assert [reconnect_delay(n) for n in range(7)] == [0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0]


def test_the_outermost_call_retries_a_nested_ones_loss_whole(slept):
    c = FlakyConnector("get_job", drops=1)  # ingest_state reads get_ingest, then get_job (a public method)
    assert StoreManager(c).ingest_state("j") is None
    assert c.calls == ["get_ingest", "get_job", "get_ingest", "get_job"] and slept == [0.1]


def test_other_errors_and_once_methods_fail_at_once(slept):
    with pytest.raises(StorageError):
        StoreManager(FlakyConnector("get_job", drops=1, lost=False)).get_job("j")  # a lock, a full disk
    c = FlakyConnector("beat", drops=1)
    with pytest.raises(StorageError):
        StoreManager(c).worker_beat("h:1:abc", "j", "k", 60, 1e6, 5)  # the next beat comes in a second
    assert slept == []


def test_past_the_deadline_the_error_is_the_users(slept, monkeypatch):
    monkeypatch.setattr(manager, "STORE_RECONNECT_S", 0.0)
    with pytest.raises(StorageError, match="cannot reach"):
        StoreManager(FlakyConnector("get_job", drops=1)).get_job("j")
    assert slept == []
