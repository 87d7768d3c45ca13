"""One rate limit shared by the workers of one endpoint and key: the pace key, the share decision,
the limiter's share changing at runtime, and the worker's share loop over an in-memory coordinator.
No sleeping: every clock is a number the test moves."""
from __future__ import annotations

import pytest

from prelabel.llm.pacing import RateLimiter
from prelabel.llm.shares import Peer, Share, decide_share, pace_key
from prelabel.worker.coordinator import MemoryCoordinator
from prelabel.worker.sharing import ShareKeeper

SECRET = b"s" * 32


# --- the pace key ---------------------------------------------------------------------------------

def test_pace_key_is_one_per_endpoint_model_and_key_and_never_holds_the_key():
    key = pace_key(SECRET, "openai", "https://api.example.com/v1/", "gpt-4o-mini", "sk-secret-123")
    assert key == pace_key(SECRET, "openai", "HTTPS://API.example.com:443/v1", "gpt-4o-mini", "sk-secret-123")
    others = {pace_key(SECRET, "openai", "https://api.example.com/v1", "gpt-4o", "sk-secret-123"),
              pace_key(SECRET, "openai", "https://api.example.com/v1", "gpt-4o-mini", "sk-other"),
              pace_key(SECRET, "openai", "https://gw.example.com/v1", "gpt-4o-mini", "sk-secret-123"),
              pace_key(SECRET, "azure", "https://api.example.com/v1", "gpt-4o-mini", "sk-secret-123"),
              pace_key(b"t" * 32, "openai", "https://api.example.com/v1", "gpt-4o-mini", "sk-secret-123")}
    assert key not in others and len(others) == 5
    assert "sk-secret" not in key and len(key) == 32
    # a URL's user info (where a key could hide) is not part of what the limit belongs to
    assert key == pace_key(SECRET, "openai", "https://user:pw@api.example.com/v1", "gpt-4o-mini", "sk-secret-123")


# --- the share decision ---------------------------------------------------------------------------

def peer(name: str, joined: float = 0.0, beat: float = 10.0, rpm: float = 6000, tpm: float = 1e6) -> Peer:
    return Peer(name, joined, beat, rpm, tpm)


def test_the_ceiling_is_split_evenly_among_live_workers():
    peers = [peer("a"), peer("b"), peer("c")]
    share = decide_share("a", peers, now=10.5, stale_s=3.0, recheck_s=0.1)
    assert share.share == pytest.approx(1 / 3) and share.wait_s == 0.0 and share.live == 3


def test_a_worker_silent_for_stale_s_is_counted_out():
    peers = [peer("a"), peer("b"), peer("dead", beat=7.0)]
    share = decide_share("a", peers, now=10.0, stale_s=3.0, recheck_s=0.1)
    assert share.share == pytest.approx(1 / 2) and share.live == 2


def test_a_newcomer_waits_until_every_peer_has_beaten_since_it_joined_unless_alone():
    peers = [peer("old", beat=9.9), peer("new", joined=10.0, beat=10.0)]
    share = decide_share("new", peers, now=10.2, stale_s=3.0, recheck_s=0.1)
    assert share.share == pytest.approx(1 / 2) and share.wait_s == 0.1   # not counted: look again soon
    # the old one was counted by the newcomer's beat: it sends on, at its new share
    assert decide_share("old", peers, now=10.2, stale_s=3.0, recheck_s=0.1).wait_s == 0.0
    counted = [peer("old", beat=10.3), peer("new", joined=10.0, beat=10.4)]
    assert decide_share("new", counted, now=10.4, stale_s=3.0, recheck_s=0.1).wait_s == 0.0
    alone = decide_share("new", [peer("new", joined=10.0, beat=10.0)], now=10.0, stale_s=3.0, recheck_s=0.1)
    assert alone.share == 1.0 and alone.wait_s == 0.0


def test_the_first_worker_does_not_wait_when_others_join_it():
    # a sent alone from 10.0; b and c joined after: their beats saw a, so a never stops sending
    peers = [peer("a", joined=10.0, beat=11.0), peer("b", joined=10.1, beat=10.1), peer("c", joined=10.2, beat=10.2)]
    # (it beats within recheck_s meanwhile: b has not counted c yet)
    assert decide_share("a", peers, now=11.0, stale_s=3.0, recheck_s=0.1) == Share(pytest.approx(1 / 3), 0.0, 3, True)
    assert decide_share("b", peers, now=11.0, stale_s=3.0, recheck_s=0.1).wait_s == 0.0  # a and c beat after it
    assert decide_share("c", peers, now=11.0, stale_s=3.0, recheck_s=0.1).wait_s == 0.1  # b has not yet


def test_every_worker_beats_within_recheck_s_until_each_newcomer_is_counted_by_all():
    # c joined at 10.2: a has beaten since, b has not. All three look again soon; once b has, none
    peers = [peer("a", joined=9.0, beat=10.3), peer("b", joined=9.0, beat=10.1), peer("c", joined=10.2, beat=10.2)]
    assert all(decide_share(w, peers, 10.3, 3.0, 0.1).settling for w in "abc")
    counted = [peer("a", joined=9.0, beat=10.3), peer("b", joined=9.0, beat=10.35), peer("c", joined=10.2, beat=10.4)]
    assert not any(decide_share(w, counted, 10.4, 3.0, 0.1).settling for w in "abc")
    # a stale peer (stopped) is not waited for
    stopped = counted + [peer("d", joined=1.0, beat=6.0)]
    assert not decide_share("a", stopped, 10.4, 3.0, 0.1).settling


def test_a_stale_peer_that_never_counted_a_newcomer_does_not_hold_it():
    peers = [peer("stopped", beat=6.0), peer("new", joined=9.5, beat=10.0)]
    assert decide_share("new", peers, now=10.0, stale_s=3.0, recheck_s=0.1) == Share(1.0, 0.0, 1)


def test_the_lowest_ceiling_of_the_key_is_shared():
    # b knows the server's limit is 3000 (its headers said so): a, at 6000, paces at half of 3000
    peers = [peer("a", rpm=6000), peer("b", rpm=3000)]
    assert decide_share("a", peers, 10.0, 3.0, 0.1).share == pytest.approx(0.25)
    assert decide_share("b", peers, 10.0, 3.0, 0.1).share == pytest.approx(0.5)
    tokens = [peer("a", tpm=1e6), peer("b", tpm=1e5)]
    assert decide_share("a", tokens, 10.0, 3.0, 0.1).share == pytest.approx(0.05)


def test_a_worker_the_coordinator_does_not_list_waits_as_a_newcomer():
    share = decide_share("me", [peer("a")], now=10.0, stale_s=3.0, recheck_s=0.1)
    assert share.share == pytest.approx(1 / 2) and share.wait_s == 0.1


def test_a_peer_whose_life_lock_was_seen_held_and_is_free_now_is_gone_before_its_beats_go_stale():
    from dataclasses import replace

    peers = [replace(peer("a"), held=True), replace(peer("killed"), held=False), replace(peer("c"), held=True)]
    seen = {"a", "killed", "c"}
    share = decide_share("a", peers, now=10.1, stale_s=3.0, recheck_s=0.1, seen_held=seen)
    assert share == Share(pytest.approx(1 / 2), 0.0, 2)
    # never seen held (it came before this worker did, or runs a version without life locks): its beats count
    assert decide_share("a", peers, now=10.1, stale_s=3.0, recheck_s=0.1, seen_held={"a", "c"}).live == 3
    # a store without life locks says nothing (None): the beats alone count
    plain = [peer("a"), peer("b")]
    assert decide_share("a", plain, now=10.1, stale_s=3.0, recheck_s=0.1, seen_held={"a", "b"}).live == 2
    # a newcomer is not held back by a peer that died before counting it
    joining = [replace(peer("new", joined=10.0, beat=10.0), held=True), replace(peer("killed", beat=9.9), held=False)]
    assert decide_share("new", joining, 10.1, 3.0, 0.1, seen_held={"new", "killed"}) == Share(1.0, 0.0, 1)


def test_a_worker_whose_own_life_lock_is_free_sends_nothing_until_it_holds_it_again():
    from dataclasses import replace

    peers = [replace(peer("me"), held=False), replace(peer("b"), held=True)]
    share = decide_share("me", peers, now=10.1, stale_s=3.0, recheck_s=0.1, seen_held={"me", "b"})
    assert share.wait_s == 0.1 and share.share == pytest.approx(1 / 2)


# --- the limiter's share at runtime ---------------------------------------------------------------

def starts(lim: RateLimiter, n: int, now: float) -> list[float]:
    return [lim.book(1, now).start for _ in range(n)]


def test_a_share_spaces_requests_at_that_share_of_the_ceiling():
    lim = RateLimiter(rpm=6000, tpm=10**9, headroom=1.0)  # one every 10 ms
    lim.allot(0.25, 0.0)
    got = starts(lim, 3, 0.0)
    assert got[1] - got[0] == pytest.approx(0.04) and got[2] - got[1] == pytest.approx(0.04)
    assert lim.pace(0.0) == pytest.approx(1500)


def test_a_smaller_share_voids_the_slots_booked_at_the_larger_one():
    lim = RateLimiter(rpm=6000, tpm=10**9, headroom=1.0)
    booked = [lim.book(1, 0.0) for _ in range(10)]    # 0, 10, ..., 90 ms
    lim.started(0.0, booked[0])
    lim.allot(0.5, 0.001)
    assert not lim.holds(booked[5])
    again = lim.rebook(booked[5], 0.001)
    assert again.start == pytest.approx(0.02)          # 20 ms after the last start, at the new spacing
    assert lim.holds(again)


def test_a_larger_share_lets_the_pace_grow_at_once():
    lim = RateLimiter(rpm=6000, tpm=10**9, headroom=1.0)
    lim.allot(1 / 3, 0.0)
    assert lim.pace(0.0) == pytest.approx(2000)
    lim.allot(1 / 2, 5.0)                              # a worker died: its share is ours
    assert lim.pace(5.0) == pytest.approx(3000)
    got = starts(lim, 2, 5.0)
    assert got[1] - got[0] == pytest.approx(0.02)


def test_a_larger_share_voids_the_line_booked_at_the_smaller_one():
    # 32 holders booked 30 ms apart (a third of 100/s): a second of line. Raised to the whole
    # ceiling, they book again 10 ms apart, not after that second.
    lim = RateLimiter(rpm=6000, tpm=10**9, headroom=1.0)
    lim.allot(1 / 3, 0.0)
    booked = [lim.book(1, 0.0) for _ in range(32)]
    lim.started(0.0, booked[0])
    assert booked[-1].start == pytest.approx(0.93)
    lim.allot(1.0, 0.001)
    assert not lim.holds(booked[-1])
    again = [lim.rebook(slot, 0.001) for slot in booked[1:]]
    assert [a.start for a in again[:2]] == [pytest.approx(0.01), pytest.approx(0.02)]
    assert again[-1].start == pytest.approx(0.31)


def test_what_a_429_taught_scales_with_the_share():
    lim = RateLimiter(rpm=6000, tpm=10**9, headroom=1.0)
    lim.allot(0.5, 0.0)
    for i in range(60):                                # 50 ms apart: 20/s admitted before the refusal
        lim.started(i * 0.05)
    assert lim.limited(sent_at=3.0, now=3.0)
    cut = lim.pace(3.0)
    assert cut < 3000
    lim.allot(1.0, 3.0)
    assert lim.pace(3.0) == pytest.approx(2 * cut)     # the same share of the ceiling as before


def test_tokens_are_shared_too():
    lim = RateLimiter(rpm=10**6, tpm=60_000, headroom=1.0)  # 1000 tokens/s
    lim.allot(0.5, 0.0)
    first, second = lim.book(100, 0.0), lim.book(100, 0.0)
    assert second.start - first.start == pytest.approx(0.2)  # 100 tokens at 500 a second


def test_the_servers_limit_and_quota_are_the_keys_and_the_share_applies_to_them():
    lim = RateLimiter(rpm=6000, tpm=10**9, headroom=1.0)
    lim.allot(0.5, 0.0)
    lim.observe({"x-ratelimit-limit-requests": "3000"}, 0.0)
    assert lim.rpm == 3000 and lim.pace(0.0) == pytest.approx(1500)
    # Azure: 600 requests left of the minute's quota, 60 s to its reset: 10/s for the whole key
    lim.observe({"x-ratelimit-limit-requests": "3000", "x-ratelimit-remaining-requests": "600",
                 "x-ratelimit-reset-requests": "60s"}, 0.0)
    assert lim.pace(1.0) == pytest.approx(300)


def test_a_share_outside_0_1_is_refused():
    lim = RateLimiter(rpm=6000, tpm=10**9)
    for share in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError):
            lim.allot(share, 0.0)


# --- the worker's share loop ----------------------------------------------------------------------

class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


async def inline(fn, *args):  # the coordinator called on the loop, not in a thread: deterministic
    return fn(*args)


def keeper(coordinator, clock, name: str, key: str = "k", rpm: int = 6000) -> ShareKeeper:
    return ShareKeeper(coordinator, RateLimiter(rpm=rpm, tpm=10**9, headroom=1.0), name, "job", key,
                       interval_s=1.0, stale_s=3.0, recheck_s=0.1, clock=clock, call=inline)


async def settle() -> None:
    import asyncio
    for _ in range(10):  # the beats step() started land (and a leave they were waiting for)
        await asyncio.sleep(0)


async def test_workers_of_one_key_share_and_a_newcomer_waits_for_the_others():
    clock = Clock()
    coordinator = MemoryCoordinator(clock)
    a = keeper(coordinator, clock, "a")
    await a.start()
    assert a.last.share == 1.0 and a.limiter.paused_until == 0.0  # alone: at once, at the whole ceiling
    clock.t += 0.5
    b = keeper(coordinator, clock, "b")
    await b.start()
    assert b.last.share == 0.5 and b.limiter.paused_until == pytest.approx(clock.t + 0.15)
    assert b.next_in == 0.1                             # not counted yet: b looks again soon
    assert a.limiter.pace(clock.t) == 6000              # a has not beaten since b came...
    for _ in range(4):                                  # ...and while it has not, b holds on
        clock.t += 0.1
        b.step()
        await settle()
        assert b.last.wait_s > 0 and b.limiter.paused_until == pytest.approx(clock.t + 0.15)
    clock.t += 0.1
    a.step()
    await settle()
    assert a.last.share == 0.5 and a.limiter.pace(clock.t) == pytest.approx(3000)  # a made room...
    assert a.last.wait_s == 0.0 and a.limiter.paused_until == 0.0  # ...and never stopped sending
    clock.t += 0.1
    b.step()
    await settle()
    assert b.last.wait_s == 0.0 and b.next_in == 1.0    # counted: b sends once this hold ends
    clock.t += 0.2
    b.step()
    await settle()
    assert b.limiter.paused_until < clock.t
    other = keeper(coordinator, clock, "c", key="another key")
    await other.start()
    assert other.last.share == 1.0


async def test_peers_beat_within_recheck_s_while_a_newcomer_waits_for_the_last_of_them():
    clock = Clock()
    coordinator = MemoryCoordinator(clock)
    a, b = keeper(coordinator, clock, "a"), keeper(coordinator, clock, "b")
    await a.start()
    clock.t += 0.1
    await b.start()
    clock.t += 0.1
    a.step()
    await settle()
    assert a.next_in == 1.0 and b.next_in == 0.1        # b counted by a; b does not know it yet
    clock.t += 0.1
    c = keeper(coordinator, clock, "c")
    await c.start()
    clock.t += 0.1
    a.step()
    await settle()
    assert a.last.share == pytest.approx(1 / 3) and a.next_in == 0.1  # b has not counted c: a looks again soon
    clock.t += 0.1
    b.step()
    await settle()
    clock.t += 0.1
    a.step(), c.step()
    await settle()
    assert c.last.wait_s == 0 and a.next_in == 1.0 and c.next_in == 1.0  # everyone counted: beats as usual


async def test_a_worker_whose_queue_ran_dry_beats_often_and_takes_a_leavers_share_at_once():
    clock = Clock()
    coordinator = MemoryCoordinator(clock)
    a, b = keeper(coordinator, clock, "a"), keeper(coordinator, clock, "b")
    await a.start()
    clock.t += 0.05
    await b.start()
    clock.t += 0.1
    a.step()
    await settle()
    assert a.last.share == 0.5 and a.next_in == 1.0
    a.hurry()                                           # the job's queue came back empty
    assert a.next_in == 0.1
    await b.leave()                                     # b has nothing more to send
    assert b.next_in == 0.1 and coordinator.jobs == {"a": "job"}
    clock.t += 0.1
    a.step()
    await settle()
    assert a.last.share == 1.0                          # a tenth of a second, not a beat interval
    b.step()
    await settle()
    assert coordinator.jobs == {"a": "job"}             # left for good: it beats no more
    await b.leave()                                     # (the end of its block leaves again: once)


async def test_a_run_that_sends_nothing_more_leaves_while_it_still_commits():
    import asyncio

    from prelabel.worker.sharing import shared_pace

    clock = Clock()
    coordinator = MemoryCoordinator(clock)
    k = keeper(coordinator, clock, "a")
    dry, sent_all = asyncio.Event(), asyncio.Event()
    async with shared_pace(k, dry, sent_all):
        assert coordinator.jobs == {"a": "job"} and k.next_in == 1.0
        dry.set()
        await settle()
        assert k.next_in == 0.1
        sent_all.set()
        await settle()
        assert coordinator.jobs == {}                   # its share is free before the block ends
    assert coordinator.jobs == {}


async def test_a_dead_workers_share_goes_to_the_others_and_one_that_leaves_gives_it_back():
    clock = Clock()
    coordinator = MemoryCoordinator(clock)
    a, b, c = (keeper(coordinator, clock, name) for name in "abc")
    for k in (a, b, c):
        await k.start()
    for k in (a, b, c):
        k.step()
    await settle()
    assert a.last.share == pytest.approx(1 / 3)
    for _ in range(3):                                  # c is killed: a and b go on beating
        clock.t += 1.0
        a.step(), b.step()
        await settle()
    assert a.last.share == pytest.approx(1 / 2) and b.last.share == pytest.approx(1 / 2)
    assert a.limiter.pace(clock.t) == pytest.approx(3000)
    await b.leave()
    clock.t += 1.0
    a.step()
    await settle()
    assert a.last.share == 1.0 and a.limiter.pace(clock.t) == pytest.approx(6000)


async def two_running(coordinator, clock) -> tuple[ShareKeeper, ShareKeeper]:
    """Keepers a and b started, each counted by the other (b no longer paused)."""
    a, b = keeper(coordinator, clock, "a"), keeper(coordinator, clock, "b")
    await a.start()
    await b.start()
    for _ in range(2):
        clock.t += 1.0
        a.step(), b.step()
        await settle()
    assert b.limiter.paused_until < clock.t
    return a, b


def fail_beats_of(coordinator, worker: str, error: str):
    """``worker``'s beats raise from now on (the store gone, for it alone); the beat to put back."""
    beat = coordinator.beat

    def down(who, *args):
        if who == worker:
            raise OSError(error)
        return beat(who, *args)

    coordinator.beat = down
    return beat


async def test_a_worker_that_cannot_beat_holds_its_requests_before_the_others_count_it_out():
    clock = Clock()
    coordinator = MemoryCoordinator(clock)
    a, b = await two_running(coordinator, clock)
    beat = fail_beats_of(coordinator, "b", "the database is gone")
    clock.t += 1.0
    a.step(), b.step()
    await settle()
    assert b.limiter.paused_until < clock.t             # 1 s since its last beat: on at its share
    clock.t += 1.0
    a.step(), b.step()
    await settle()
    # 2 s (stale_s - interval_s) without a beat: the others may count it out at 3 s; it holds
    assert b.limiter.paused_until == pytest.approx(clock.t + 1.0)
    clock.t += 1.0
    a.step()
    await settle()
    assert a.last.share == 1.0                          # b counted out
    coordinator.beat = beat                             # back: b is a newcomer again, and waits
    clock.t += 1.0
    a.step(), b.step()
    await settle()
    # held by the step that found no beat for 2 s; then it waits to be counted, as a newcomer
    assert b.last.share == 0.5 and b.last.wait_s > 0 and b.limiter.paused_until == pytest.approx(clock.t + 1.0)


async def test_a_worker_woken_after_a_long_stop_holds_before_it_beats():
    # SIGSTOP past stale_s, then SIGCONT: its share was handed out meanwhile
    clock = Clock()
    coordinator = MemoryCoordinator(clock)
    a, b = keeper(coordinator, clock, "a"), keeper(coordinator, clock, "b")
    await a.start()
    await b.start()
    for _ in range(10):                                 # b stopped: a beats on alone
        clock.t += 1.0
        a.step()
        await settle()
    assert a.last.share == 1.0
    b.step()                                            # paused at once, before the beat lands
    assert b.limiter.paused_until >= clock.t + 1.0
    await settle()
    assert b.last.share == 0.5 and b.last.wait_s > 0     # a had counted b out: b joins again, and waits
    assert b.limiter.paused_until == pytest.approx(clock.t + 1.0)


class LifeCoordinator(MemoryCoordinator):
    """Rolls that say whose life lock is held, as PostgreSQL's do: ``killed`` workers' are free."""

    def __init__(self, clock) -> None:
        super().__init__(clock)
        self.killed: set[str] = set()

    def beat(self, worker, *args):
        from dataclasses import replace

        if worker in self.killed:
            raise AssertionError("a killed worker does not beat")
        roll = super().beat(worker, *args)
        return type(roll)(roll.now, tuple(replace(p, held=p.worker not in self.killed) for p in roll.peers))


async def test_a_killed_workers_share_goes_to_the_others_at_their_next_beat_where_life_locks_tell():
    clock = Clock()
    coordinator = LifeCoordinator(clock)
    a, b, c = (keeper(coordinator, clock, name) for name in "abc")
    for k in (a, b, c):
        await k.start()
    for k in (a, b, c):
        k.step()
    await settle()
    assert a.last.share == pytest.approx(1 / 3)
    coordinator.killed.add("c")                         # SIGKILL: its connection, and its lock, are gone
    clock.t += 0.25                                     # a quarter of a beat interval: c's beat is fresh
    a.step(), b.step()
    await settle()
    assert a.last.share == pytest.approx(1 / 2) and b.last.share == pytest.approx(1 / 2)
    assert a.limiter.pace(clock.t) == pytest.approx(3000)


async def test_a_worker_with_a_life_lock_whose_beat_fails_holds_at_once():
    clock = Clock()
    coordinator = LifeCoordinator(clock)
    a, b = await two_running(coordinator, clock)
    beat = fail_beats_of(coordinator, "b", "the connection to the database was lost")
    clock.t += 0.1
    b.step()
    await settle()
    # its life lock may be gone with the connection, and a counts it out by that at once: b holds now,
    # not stale_s - interval_s later as a worker without one does
    assert b.limiter.paused_until == pytest.approx(clock.t + 1.0)
    clock.t += 1.0
    b.step()
    await settle()
    assert b.limiter.paused_until == pytest.approx(clock.t + 1.0)  # renewed while no beat lands
    coordinator.beat = beat
    clock.t += 1.0
    b.step()
    await settle()
    assert b.last.wait_s == 0.0                         # a beat landed: counted as it was, so...
    clock.t += 1.0
    b.step()
    await settle()
    assert b.limiter.paused_until <= clock.t            # ...the hold is not renewed: it sends again


async def test_a_first_beat_the_store_refuses_is_tried_again_before_the_run_fails(monkeypatch):
    import asyncio

    from prelabel.errors import StorageError

    slept: list[float] = []

    async def no_sleep(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr(asyncio, "sleep", no_sleep)
    clock = Clock()

    class Busy(MemoryCoordinator):
        def __init__(self, fails: int) -> None:
            super().__init__(clock)
            self.fails = fails

        def beat(self, *args):
            if self.fails:
                self.fails -= 1
                raise StorageError("store", "the database is locked", "wait", locked=True)
            return super().beat(*args)

    k = keeper(Busy(fails=2), clock, "a")
    await k.start()
    assert k.last.share == 1.0 and slept == [1.0, 1.0]
    k = keeper(Busy(fails=10), clock, "b")
    with pytest.raises(StorageError):
        await k.start()  # stale_s (3 s) worth of tries, then the run fails with the store's error
    assert slept == [1.0, 1.0, 1.0, 1.0]
