"""A reconnect storm (every page subscribes at once after a server restart): sockets
subscribing to one stream with one ``since`` share a history read, but only one that had
not started when they asked (they joined the group before asking)."""

from __future__ import annotations

import asyncio
from unittest import mock

import pytest
import pytest_asyncio

from turbo_tasks import history, storm


class FakeRedis:
    """history.read, answered when the test says: records each read's start."""

    def __init__(self) -> None:
        self.started: list[asyncio.Future[tuple[str, str, list[tuple[str, str]]]]] = []
        self.started_event = asyncio.Event()

    async def read(self, layer, group, since):  # type: ignore[no-untyped-def]
        answer = asyncio.get_running_loop().create_future()
        self.started.append(answer)
        self.started_event.set()
        return await answer

    def answer(self, index: int, seq: int) -> None:
        self.started[index].set_result(("ok", f"{'0' * 16}.{seq}", [(f"{'0' * 16}.{seq}", "x")]))


@pytest_asyncio.fixture
async def slot():  # type: ignore[no-untyped-def]
    """One storm.slot() for this loop, held by the test until it releases it; a FakeRedis."""
    loop = asyncio.get_running_loop()
    semaphore = storm._slots[loop] = asyncio.Semaphore(1)
    fake = FakeRedis()
    with mock.patch.object(history, "read", fake.read):
        yield semaphore, fake


LAYER = object()
SINCE = ("0" * 16, 3)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


@pytest.mark.asyncio
async def test_sockets_asking_while_a_read_waits_for_a_slot_share_it(slot):
    semaphore, fake = slot
    await semaphore.acquire()  # every slot busy (group changes of other sockets)
    reads = [asyncio.ensure_future(storm.read_history(LAYER, "g", SINCE)) for _ in range(5)]
    other = asyncio.ensure_future(storm.read_history(LAYER, "g", ("0" * 16, 1)))
    await settle()
    semaphore.release()
    await settle()
    assert len(fake.started) == 1
    fake.answer(0, 7)
    results = await asyncio.gather(*reads)
    assert all(r == results[0] for r in results)
    assert results[0][1].endswith(".7")
    # Another since is another read, after the first gave its slot back.
    await settle()
    assert len(fake.started) == 2
    fake.answer(1, 8)
    assert (await other)[1].endswith(".8")


@pytest.mark.asyncio
async def test_a_read_already_sent_is_never_shared_with_a_socket_that_joined_after(slot):
    # The frame appended after the first read ran and before the second socket joined is
    # only in the history: the second socket must read it there itself.
    semaphore, fake = slot
    first = asyncio.ensure_future(storm.read_history(LAYER, "g", SINCE))
    await asyncio.wait_for(fake.started_event.wait(), 5)  # its read is on its way to Redis
    # ... a frame is appended, then the second socket joins and asks:
    second = asyncio.ensure_future(storm.read_history(LAYER, "g", SINCE))
    await settle()
    assert not second.done()
    assert len(fake.started) == 1  # waits for a slot: the first read holds the only one
    fake.answer(0, 7)
    assert (await first)[1].endswith(".7")
    await settle()
    assert len(fake.started) == 2  # a read of its own, started after it asked
    fake.answer(1, 8)
    assert (await second)[1].endswith(".8")
    assert semaphore._value == 1


@pytest.mark.asyncio
async def test_sharers_read_again_when_the_socket_whose_read_they_wait_for_goes_away(slot):
    semaphore, fake = slot
    await semaphore.acquire()
    leader = asyncio.ensure_future(storm.read_history(LAYER, "g", SINCE))
    await settle()
    followers = [asyncio.ensure_future(storm.read_history(LAYER, "g", SINCE)) for _ in range(3)]
    await settle()
    leader.cancel()  # its socket closed while the read waited for a slot
    await settle()
    semaphore.release()
    await settle()
    assert len(fake.started) == 1  # the followers share one new read
    fake.answer(0, 9)
    assert [r[1][-2:] for r in await asyncio.gather(*followers)] == [".9"] * 3
    with pytest.raises(asyncio.CancelledError):
        await leader
    assert storm._queued_reads[asyncio.get_running_loop()] == {}


@pytest.mark.asyncio
async def test_a_failed_read_is_read_again_by_each_sharer(slot):
    semaphore, fake = slot
    await semaphore.acquire()
    reads = [asyncio.ensure_future(storm.read_history(LAYER, "g", SINCE)) for _ in range(2)]
    await settle()
    semaphore.release()
    await settle()
    fake.started[0].set_exception(ConnectionError("Redis went away"))
    with pytest.raises(ConnectionError):
        await reads[0]
    await settle()
    assert len(fake.started) == 2  # the sharer sees its own outcome
    fake.answer(1, 5)
    assert (await reads[1])[1].endswith(".5")
