"""storage/batching.py: calls that arrive together run together, and each caller hears only its own outcome."""

from __future__ import annotations

import asyncio
from typing import Any, NamedTuple

import pytest

from storage.batching import Batcher


class Recorder:
    """Records its batches; "bad" fails alone, "all-bad" fails its whole batch, "hang" never returns."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.release = asyncio.Event()
        self.release.set()

    async def run(self, items: list[str]) -> list[str | BaseException]:
        self.batches.append(items)
        await self.release.wait()
        if "hang" in items:  # a command on a connection that never answers
            await asyncio.Event().wait()
        if "all-bad" in items:
            msg = "the server went away"
            raise ConnectionError(msg)
        return [ValueError(item) if item == "bad" else item.upper() for item in items]


class Queued(NamedTuple):
    recorder: Recorder
    batcher: Batcher[str, str]
    first: asyncio.Task[str]
    waiting: list[asyncio.Task[str]]


async def queued_behind_a_running_call(items: str | tuple[str, ...], **batcher_options: Any) -> Queued:
    """A call to "a" at the database (held until `recorder.release` is set), and `items` waiting behind it."""
    recorder = Recorder()
    recorder.release.clear()
    batcher = Batcher[str, str](recorder.run, **batcher_options)
    first = asyncio.create_task(batcher("a"))
    await asyncio.sleep(0)
    waiting = [asyncio.create_task(batcher(item)) for item in items]
    await asyncio.sleep(0)
    return Queued(recorder, batcher, first, waiting)


async def test_a_call_alone_runs_at_once() -> None:
    recorder = Recorder()
    batcher = Batcher[str, str](recorder.run)
    assert await batcher("a") == "A"
    assert await batcher("b") == "B"
    assert recorder.batches == [["a"], ["b"]]


async def test_calls_that_arrive_while_one_runs_share_the_next_batch() -> None:
    recorder, _, first, rest = await queued_behind_a_running_call("bcd")
    recorder.release.set()
    assert await first == "A"
    assert await asyncio.gather(*rest) == ["B", "C", "D"]
    assert recorder.batches == [["a"], ["b", "c", "d"]]


async def test_batches_are_capped() -> None:
    recorder = Recorder()
    recorder.release.clear()
    batcher = Batcher[str, str](recorder.run, max_batch=2)
    calls = [asyncio.create_task(batcher(item)) for item in "abcde"]
    await asyncio.sleep(0)
    recorder.release.set()
    assert await asyncio.gather(*calls) == ["A", "B", "C", "D", "E"]
    assert recorder.batches == [["a"], ["b", "c"], ["d", "e"]]


async def test_an_item_that_fails_fails_only_its_own_caller() -> None:
    recorder, _, first, (good, bad) = await queued_behind_a_running_call(("b", "bad"))
    recorder.release.set()
    assert await first == "A"
    assert await good == "B"
    with pytest.raises(ValueError, match="bad"):
        await bad


async def test_a_batch_that_fails_fails_each_of_its_callers_and_the_next_batch_runs() -> None:
    recorder, batcher, first, failing = await queued_behind_a_running_call(("b", "all-bad"))
    recorder.release.set()
    assert await first == "A"
    for call in failing:
        with pytest.raises(ConnectionError, match="went away"):
            await call
    assert await batcher("c") == "C"


async def test_a_caller_that_gives_up_does_not_stop_the_others() -> None:
    recorder, _, first, (impatient, patient) = await queued_behind_a_running_call("bc")
    impatient.cancel()
    recorder.release.set()
    assert await first == "A"
    assert await patient == "C"
    assert impatient.cancelled()


async def test_a_shared_batch_that_outlives_its_time_bound_fails_and_the_next_one_runs() -> None:
    recorder, batcher, first, (stuck,) = await queued_behind_a_running_call(("hang",), time_bound=lambda: 0.05)
    recorder.release.set()
    assert await first == "A"
    with pytest.raises(TimeoutError):
        await stuck
    assert await batcher("c") == "C"
