"""Every storage against aiogram's MemoryStorage on random sequences of calls (hypothesis's stateful testing).

Two storages on one database play two bot processes; a step may run two or
three calls at once, and then the storage must end as some serial order of
them ends in MemoryStorage, with the results that order gives. A process may
close and reopen (a restart), and a key left with no state and no data must
leave no record behind. Each backend runs MODEL_EXAMPLES random sequences
(default 15) of up to MODEL_STEPS steps (default 20); raise them to search longer.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import os
from collections.abc import Iterator
from typing import Any

import pytest
from aiogram.fsm.storage.base import BaseStorage, StorageKey
from aiogram.fsm.storage.memory import MemoryStorage
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, rule, run_state_machine_as_test

from tests.support.backends import ALL_BACKENDS, Backend
from tests.support.mocked_session import BOT_USER
from tests.support.mongo_server import configured_url

EXAMPLES = int(os.environ.get("MODEL_EXAMPLES", "15"))
STEPS = int(os.environ.get("MODEL_STEPS", "20"))
KEYS_PER_EXAMPLE = 3
_first_user_ids = itertools.count(10_000, KEYS_PER_EXAMPLE)

# What JSON and BSON both hold: no surrogates, integers that fit in 64 bits signed, finite floats.
text = st.text(st.characters(codec="utf-8"), max_size=8)
data_keys = st.sampled_from(["name", "age", "a.b", "$set", "%2E", "", "ключ", "\x00"]) | text
exact_leaves = st.none() | st.integers(-(2**63), 2**63 - 1) | text
leaves = exact_leaves | st.booleans() | st.floats(allow_nan=False, allow_infinity=False)


def dicts_of(
    leaf: st.SearchStrategy[Any], keys: st.SearchStrategy[str] = data_keys
) -> st.SearchStrategy[dict[str, Any]]:
    nested = st.recursive(
        leaf, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(data_keys, inner, max_size=3), max_leaves=6
    )
    return st.dictionaries(keys, nested, max_size=4)


states = st.none() | st.sampled_from(["Questionnaire:name", "Questionnaire:age", "other"])
key_index = st.integers(0, KEYS_PER_EXAMPLE - 1)
Call = tuple[str, int, Any]


def calls_with(patches: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[Call]:
    return st.one_of(
        st.tuples(st.just("get_state"), key_index, st.none()),
        st.tuples(st.just("get_data"), key_index, st.none()),
        st.tuples(st.just("get_state_and_data"), key_index, st.none()),
        st.tuples(st.just("set_state"), key_index, states),
        st.tuples(st.just("set_data"), key_index, dicts_of(leaves)),
        st.tuples(st.just("update_data"), key_index, patches),
        st.tuples(st.just("set_state_and_data"), key_index, st.tuples(states, dicts_of(leaves))),
    )


CALLS = calls_with(dicts_of(leaves))
# nx-27017 stores `$set` on a dotted path (update_data on Mongo) with booleans as 0/1 and doubles
# rounded, and ignores one whose field name has a "["; MongoDB does none of that. On nx-27017,
# update_data is given none of them (docs/nx-27017.md).
CALLS_FOR_NX_27017 = calls_with(dicts_of(exact_leaves, data_keys.filter(lambda key: "[" not in key)))
process = st.integers(0, 1)


async def apply(storage: BaseStorage, keys: list[StorageKey], call: Call) -> Any:
    method, index, argument = call
    if method in ("get_state", "get_data"):
        return await getattr(storage, method)(keys[index])
    if method == "get_state_and_data" and isinstance(storage, MemoryStorage):
        return await storage.get_state(keys[index]), await storage.get_data(keys[index])
    if method == "get_state_and_data":
        return await storage.get_state_and_data(keys[index])  # type: ignore[attr-defined]
    if method == "set_state_and_data" and isinstance(storage, MemoryStorage):
        # The oracle has no such call; its calls never interleave, so two in a row are one write.
        state, data = argument
        await storage.set_state(keys[index], state)
        return await storage.set_data(keys[index], data)
    if method == "set_state_and_data":
        return await storage.set_state_and_data(keys[index], *argument)  # type: ignore[attr-defined]
    return await getattr(storage, method)(keys[index], argument)


async def snapshot(storage: BaseStorage, keys: list[StorageKey]) -> list[tuple[str | None, dict[str, Any]]]:
    return [(await storage.get_state(key), await storage.get_data(key)) for key in keys]


def typed(value: Any) -> Any:
    """`value` with each leaf's type kept beside it: True must not pass for 1, nor 1 for 1.0."""
    if isinstance(value, dict):
        return {name: typed(item) for name, item in value.items()}
    if isinstance(value, list | tuple):
        return [typed(item) for item in value]
    return (type(value).__name__, value)


class StorageAgainstMemory(RuleBasedStateMachine):
    backend: Backend
    runner: asyncio.Runner

    def __init__(self) -> None:
        super().__init__()
        first = next(_first_user_ids)
        self.keys = [StorageKey(bot_id=BOT_USER.id, chat_id=user, user_id=user) for user in range(first, first + 3)]
        self.oracle = MemoryStorage()
        self.processes = [self.run(self.backend.open()), self.run(self.backend.open())]

    def run(self, coroutine: Any) -> Any:
        return self.runner.run(coroutine)

    @property
    def calls(self) -> st.SearchStrategy[Call]:
        return CALLS_FOR_NX_27017 if self.backend.is_mongo and not configured_url() else CALLS

    @rule(which=process, draw=st.data())
    def one_call(self, which: int, draw: st.DataObject) -> None:
        call = draw.draw(self.calls)
        observed = self.run(apply(self.processes[which], self.keys, call))
        expected = self.run(apply(self.oracle, self.keys, call))
        assert typed(observed) == typed(expected), call

    @rule(draw=st.data())
    def calls_at_once(self, draw: st.DataObject) -> None:
        together = draw.draw(st.lists(st.tuples(process, self.calls), min_size=2, max_size=3))

        async def at_once() -> list[Any]:
            return await asyncio.gather(*(apply(self.processes[which], self.keys, call) for which, call in together))

        observed = typed(self.run(at_once()))
        final = typed(self.run(snapshot(self.processes[0], self.keys)))
        for order in itertools.permutations(range(len(together))):
            oracle = copy.deepcopy(self.oracle)
            results: list[Any] = [None] * len(together)
            for position in order:
                results[position] = self.run(apply(oracle, self.keys, together[position][1]))
            if typed(results) == observed and typed(self.run(snapshot(oracle, self.keys))) == final:
                self.oracle = oracle
                return
        msg = f"no serial order of {together} returns {observed} and ends as {final}"
        raise AssertionError(msg)

    @rule(which=process)
    def restart(self, which: int) -> None:
        self.run(self.processes[which].close())
        self.processes[which] = self.run(self.backend.open())

    @rule()
    def empty_keys_leave_no_record(self) -> None:
        records = set(self.run(self.backend.record_ids(self.processes[0])))
        for key in self.keys:
            if self.run(self.oracle.get_state(key)) is None and not self.run(self.oracle.get_data(key)):
                assert self.processes[0].key_builder.build(key) not in records

    def teardown(self) -> None:
        for storage in self.processes:
            self.run(storage.close())


@pytest.fixture
def runner() -> Iterator[asyncio.Runner]:
    with asyncio.Runner() as each:
        yield each


@pytest.mark.parametrize("backend", ALL_BACKENDS, indirect=True)
def test_storage_behaves_as_memory_storage(backend: Backend, runner: asyncio.Runner) -> None:
    machine = type("Machine", (StorageAgainstMemory,), {"backend": backend, "runner": runner})
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=EXAMPLES,
            stateful_step_count=STEPS,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
        ),
    )
