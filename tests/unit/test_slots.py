"""Requests in flight limited after timeouts: halved by each, grown back by answers."""
import asyncio

from prelabel.slots import AdaptiveSlots


def test_it_starts_low_and_doubles_each_round_until_a_timeout():
    slots = AdaptiveSlots(32)
    assert slots.limit == 8
    for _ in range(8):
        slots.answered()
    assert slots.limit == 16
    for _ in range(100):
        slots.answered()
    assert slots.limit == 32
    assert AdaptiveSlots(2).limit == 2


def test_timeouts_halve_the_limit_and_answers_grow_it_back():
    slots = AdaptiveSlots(32)
    for _ in range(6):
        slots.timed_out()
    assert slots.limit == 1.0
    for _ in range(10):
        slots.answered()
    assert 4 < slots.limit < 5
    for _ in range(2000):
        slots.answered()
    assert slots.limit == 32


async def test_no_more_in_flight_than_the_limit():
    slots = AdaptiveSlots(8)
    slots.timed_out()
    slots.timed_out()  # 2, and grows slowly from there
    most = 0

    async def one():
        nonlocal most
        async with slots.held():
            most = max(most, slots.in_flight)
            await asyncio.sleep(0)

    await asyncio.gather(*(one() for _ in range(20)))
    assert 2 <= most <= 3 and slots.in_flight == 0  # answers grow it by about 1/limit each
