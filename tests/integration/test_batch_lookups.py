"""A batch tick replays every waiting item of its job, and each item's first request is looked up in
the response cache: a page of them in one query, not one round trip each (on a loaded PostgreSQL, ~4 ms
a round trip made a 100,000-item submit tick take 401 s). On SQLite and PostgreSQL, in process,
against the simulator, the clock injected."""
from __future__ import annotations

import asyncio
import collections

from prelabel.batch.executor import LEASE_PAGE
from prelabel.store import open_store
from prelabel.store.manager import StoreManager
from tests.faults.test_batch_tick_beats import N, Clock, one_tick, simulator_thread, submitted
from tests.integration import test_store_contract as contract

pg_database, url = contract.pg_database, contract.url  # the contract suite's fixtures: both backends


def test_a_tick_looks_the_cache_up_once_per_page_not_once_per_item(url, tmp_path, monkeypatch):
    calls: collections.Counter = collections.Counter()
    one, many = StoreManager.cache_get, getattr(StoreManager, "cache_get_many", None)

    def counted_one(self, key):
        calls["one"] += 1
        return one(self, key)

    def counted_many(self, keys):
        keys = list(keys)
        calls["many"] += 1
        calls["keys"] += len(keys)
        return many(self, keys)

    monkeypatch.setattr(StoreManager, "cache_get", counted_one)
    monkeypatch.setattr(StoreManager, "cache_get_many", counted_many, raising=False)  # (the old code: none)
    clock, job_id = Clock(), submitted(url, tmp_path)
    assert N <= LEASE_PAGE  # one page a tick
    with simulator_thread() as (sim, base):
        ticks = []
        while not ticks or ticks[-1].waiting:
            assert len(ticks) < 6
            clock.now += 1
            calls_before = dict(calls)
            ticks.append(asyncio.run(one_tick(url, base, job_id, "host-a:1:a", clock)))
            tick_calls = {k: calls[k] - calls_before.get(k, 0) for k in ("one", "many", "keys")}
            # the submit tick asks for every item, a collect tick finds every answer: one query either way
            assert tick_calls["many"] <= 2 and tick_calls["one"] < N // 4, tick_calls
    store = open_store(url)
    try:
        assert store.counts(job_id) == {"done": N}
    finally:
        store.close()
    assert calls["keys"] >= 2 * N  # each item's request looked up in the submit tick and in the collect tick
    assert max(sim.batches.stats.by_custom_id.values()) == 1  # nothing asked twice
