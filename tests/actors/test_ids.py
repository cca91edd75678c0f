"""OrderIds: strictly increasing bigint ids that carry their creation instant."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest

from tradeengine.actors.ids import OrderIds, wall_clock_us
from tradeengine.storage.ids import ID_EPOCH_US, MAX_ORDER_ID, created_at_of, timestamp_us_of

MOMENT_US = 1_795_000_000_123_456  # 2026-11-18T11:06:40.123456Z


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: int = MOMENT_US) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def test_an_id_is_the_microseconds_since_2025_shifted_by_twelve_bits_with_a_counter() -> None:
    ids = OrderIds(Clock())
    order_id, timestamp = ids.next()
    assert order_id == (MOMENT_US - ID_EPOCH_US) << 12
    assert timestamp == MOMENT_US
    assert created_at_of(order_id) == datetime(2026, 11, 18, 11, 6, 40, 123456, tzinfo=UTC)
    assert OrderIds.created_at_of(order_id) == created_at_of(order_id)


def test_ids_in_the_same_microsecond_count_up_and_keep_their_instant() -> None:
    ids = OrderIds(Clock())
    got = [ids.next() for _ in range(3)]
    base = (MOMENT_US - ID_EPOCH_US) << 12
    assert got == [(base, MOMENT_US), (base + 1, MOMENT_US), (base + 2, MOMENT_US)]


def test_a_full_counter_moves_on_to_the_next_microsecond() -> None:
    ids = OrderIds(Clock())
    got = [ids.next() for _ in range(4097)]
    assert got[4095][0] & 0xFFF == 4095
    assert got[4096] == (((MOMENT_US + 1 - ID_EPOCH_US) << 12), MOMENT_US + 1)


def test_ids_never_go_backwards_when_the_clock_does() -> None:
    clock = Clock()
    ids = OrderIds(clock)
    first, _ = ids.next()
    clock.now -= 5_000_000
    second, stamp = ids.next()
    assert second == first + 1 and stamp == MOMENT_US
    clock.now += 10_000_000
    third, stamp = ids.next()
    assert third > second and stamp == MOMENT_US + 5_000_000


def test_every_id_encodes_the_instant_it_returns() -> None:
    clock = Clock()
    ids = OrderIds(clock)
    for step in (0, 0, 1, -3, 7, 0, 1000):
        clock.now += step
        order_id, stamp = ids.next()
        assert timestamp_us_of(order_id) == stamp


def test_a_floor_keeps_a_restarted_generator_above_every_stored_id_even_with_a_clock_behind() -> None:
    floor = ((MOMENT_US - ID_EPOCH_US + 60_000_000) << 12) | 17  # a minute ahead of the clock
    ids = OrderIds(Clock(), floor=floor)
    assert ids.next()[0] == floor + 1
    floor_at_end = ((MOMENT_US - ID_EPOCH_US) << 12) | 4095
    assert OrderIds(Clock(), floor=floor_at_end).next()[0] == (MOMENT_US - ID_EPOCH_US + 1) << 12
    assert OrderIds(Clock(), floor=floor - (1 << 40)).next()[0] == (MOMENT_US - ID_EPOCH_US) << 12


def test_a_floor_must_be_a_bigint() -> None:
    with pytest.raises(ValueError, match="floor"):
        OrderIds(Clock(), floor=-1)
    with pytest.raises(ValueError, match="floor"):
        OrderIds(Clock(), floor=MAX_ORDER_ID)


def test_a_clock_before_2025_still_gives_positive_increasing_ids() -> None:
    ids = OrderIds(Clock(ID_EPOCH_US - 10))
    assert [ids.next()[0] for _ in range(3)] == [1, 2, 3]


def test_threads_drawing_ids_at_once_never_get_the_same_one_and_each_sees_them_increase() -> None:
    ids = OrderIds()
    results: list[list[int]] = [[] for _ in range(8)]

    def draw(out: list[int]) -> None:
        for _ in range(5000):
            out.append(ids.next()[0])

    threads = [threading.Thread(target=draw, args=(out,)) for out in results]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [i for out in results for i in out]
    assert len(set(every)) == len(every) == 40_000
    assert all(out == sorted(out) for out in results)


def test_the_default_clock_is_the_wall_clock() -> None:
    order_id, stamp = OrderIds().next()
    assert abs(created_at_of(order_id) - datetime.now(UTC)) < timedelta(seconds=5)
    assert abs(wall_clock_us() - stamp) < 5_000_000


def test_ids_fit_a_bigint_until_2096() -> None:
    ids = OrderIds(Clock(ID_EPOCH_US + (MAX_ORDER_ID >> 12)))
    assert ids.next()[0] <= MAX_ORDER_ID
    assert created_at_of(MAX_ORDER_ID).year == 2096
