"""No message lost across kill -9 and deploys: the real `python main.py`, many users, restarts at random moments.

Sixty users fill in the questionnaire again and again, each waiting for the
bot's answer before the next message, as people do (and never sending
anything twice). Meanwhile the bot process is killed with SIGKILL several
times, then stopped with SIGTERM several times, at random moments or just as
it starts answering the backlog, and started again each time; users keep
writing while it is down. Every message
must get its answer, no answer may be filed under the wrong question, and
every summary (and every saved response) must hold exactly that user's
answers. A reply may arrive again after a kill (docs/delivery.md: one carried
out but not yet marked done), at most once per kill; nothing else may.

One long scenario per backend.
`STORM_SEED` replays one run's random choices.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bot.emulator import BotAPIEmulator, running_emulator
from states import Answer
from storage import Storages
from tests.support.backends import ALL_BACKENDS, SQL_URL_VARIABLES, make_backend
from tests.support.bot_process import BotProcess, bot_environment, drop_bot_tables
from tests.support.questionnaire import asked, bot_replies, conversation, keeps_as_typed, saved, told_apart

USERS = 60
KILLS = 3
TERMS = 3
# A missing answer is a lost message; a restart takes a few seconds, so this is generous.
REPLY_SECONDS = 60
# Free-text answers get one of these after the round's tag: a comma, quotes, HTML, an emoji.
SPICE = ("Red", 'Ochre, with "quotes"', "<b>bold</b> & co", "🎉")


@dataclass
class Person:
    """One user: sends a message, waits for the answer to it, thinks a moment, goes on."""

    user_id: int
    rng: random.Random
    rounds: list[dict[str, Answer]] = field(default_factory=list)
    expected: Counter[str] = field(default_factory=Counter)  # each reply, as often as it must come
    longest_wait: float = 0.0  # seconds, for the report: how long recovery kept this user waiting
    waits: list[tuple[float, float]] = field(default_factory=list)  # (sent, answered), monotonic

    def script(self, round_number: int) -> list[tuple[str, str]]:
        """(message, the answer it must get) for one questionnaire."""
        # Each answer of this round its own (where the question takes free text), so a misfiled one shows.
        tag = f"U{self.user_id}r{round_number}"
        apart = told_apart(tag)  # rounds are told apart by this answer
        own = {
            question.key: f"{tag} {self.rng.choice(SPICE)}"
            for question in asked()
            if keeps_as_typed(question, tag) and question.key not in apart
        } | apart
        messages = conversation(**own)
        self.rounds.append(saved(**own))
        replies = bot_replies(messages, self.rounds[-1])
        self.expected.update(replies)
        return list(zip(messages, replies, strict=True))

    async def talk(self, emulator: BotAPIEmulator, storm_over: asyncio.Event) -> None:
        round_number = 0
        while True:
            for message, answer in self.script(round_number):
                seen = len(await emulator.bot_messages(self.user_id))
                await emulator.user_sends(self.user_id, {"text": message})
                await self.wait_for(emulator, seen, answer, message)
                await asyncio.sleep(self.rng.uniform(0.05, 0.6))
            round_number += 1
            if storm_over.is_set():
                return

    async def wait_for(self, emulator: BotAPIEmulator, seen: int, answer: str, message: str) -> None:
        started = time.monotonic()
        try:
            async with asyncio.timeout(REPLY_SECONDS):
                while True:
                    texts = [m["text"] for m in await emulator.bot_messages(self.user_id)]
                    if answer in texts[seen:]:
                        self.longest_wait = max(self.longest_wait, time.monotonic() - started)
                        self.waits.append((started, time.monotonic()))
                        return
                    await emulator.bot_messages(self.user_id, len(texts) + 1, wait=REPLY_SECONDS)
        except TimeoutError:
            msg = f"user {self.user_id} got no answer to {message!r} in {REPLY_SECONDS} s: the message was lost"
            raise AssertionError(msg) from None


async def storm(bot: BotProcess, rng: random.Random) -> list[tuple[float, float]]:
    """Kill the bot, then stop it gracefully, and start it again each time; each outage (from the
    stop to the restarted bot polling again), monotonic.

    Half of the stops come at a random moment, half just as the restarted bot
    starts answering the messages that piled up while it was down (the most
    updates in flight at once).
    """
    outages = []
    for sig in [signal.SIGKILL] * KILLS + [signal.SIGTERM] * TERMS:
        if rng.random() < 0.5:
            await asyncio.sleep(rng.uniform(0.5, 3.0))
        else:
            await answering_again(bot.emulator)
            await asyncio.sleep(rng.uniform(0, 0.05))
        stopped = time.monotonic()
        code = await bot.stop(sig, wait=60)
        assert code == (0 if sig == signal.SIGTERM else -signal.SIGKILL), bot.output()[-3000:]
        await asyncio.sleep(rng.uniform(0.2, 1.0))  # users keep writing while it is down
        await bot.start()
        outages.append((stopped, time.monotonic()))
    return outages


def beyond_outages(wait: tuple[float, float], outages: list[tuple[float, float]]) -> float:
    """How long a message waited while the bot was up: its wait less the outages within it."""
    sent, answered = wait
    down = sum(max(0.0, min(answered, end) - max(sent, start)) for start, end in outages)
    return answered - sent - down


async def answering_again(emulator: BotAPIEmulator) -> None:
    """Wait for the bot's next message to anyone."""
    sent = emulator.calls.count("sendMessage")
    while emulator.calls.count("sendMessage") == sent:  # noqa: ASYNC110 - the bot process changes it
        await asyncio.sleep(0.005)


@pytest.mark.timeout(600)  # a bound on a hang: six restarts under sixty users
@pytest.mark.parametrize("backend_name", ALL_BACKENDS)
async def test_no_message_is_lost_or_misfiled_across_kills_and_deploys(
    backend_name: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    seed = int(os.environ.get("STORM_SEED", random.randrange(2**32)))
    rng = random.Random(seed)
    mongo = request.getfixturevalue("mongo_url") if backend_name.startswith("mongo") else None
    backend = make_backend(backend_name, tmp_path, mongo)
    if backend.name in SQL_URL_VARIABLES:
        await drop_bot_tables(backend.url)
    people = [Person(user_id, random.Random(rng.random())) for user_id in range(5000, 5000 + USERS)]
    async with running_emulator(BotAPIEmulator()) as (emulator, api_url):
        environment = bot_environment(backend, tmp_path)
        if backend.name == "sqlite":
            environment["DATABASE_URL"] = backend.url  # the file the test reads the responses from
        async with BotProcess(emulator, api_url, tmp_path / "bot.log", environment) as bot:
            await bot.start()
            storm_over = asyncio.Event()
            users = asyncio.gather(*(person.talk(emulator, storm_over) for person in people))
            try:
                outages = await storm(bot, rng)
                storm_over.set()
                await users
            except BaseException as error:
                users.cancel()
                error.add_note(f"STORM_SEED={seed}; bot log: {bot.log_path}")
                raise
            await bot.stop()

    waits = sorted(person.longest_wait for person in people)
    median = waits[len(waits) // 2]
    up = max(beyond_outages(wait, outages) for person in people for wait in person.waits)
    print(
        f"\nstorm on {backend_name}: longest wait {waits[-1]:.1f} s, median user's longest {median:.1f} s, "
        f"longest outage {max(end - start for start, end in outages):.1f} s, "
        f"longest wait while the bot was up (less the outages it spanned) {up:.1f} s"
    )
    for person in people:
        texts = Counter(str(m["text"]) for m in await emulator.bot_messages(person.user_id))
        assert set(texts) <= set(person.expected), (
            f"STORM_SEED={seed}: user {person.user_id} was told {set(texts) - set(person.expected)}"
        )
        # A crash repeats at most what was carried out but not yet marked done: once per kill at most.
        repeated = {text: n for text, n in texts.items() if n > person.expected[text] + KILLS}
        assert not repeated, f"STORM_SEED={seed}: user {person.user_id} got these more than once per crash: {repeated}"
    storages: Storages = await backend.open_storages()
    try:
        for person in people:
            responses = await storages.responses.for_user(person.user_id)
            [first] = told_apart(f"U{person.user_id}r0")  # the answer rounds are told apart by
            kept = sorted((r.answers for r in responses), key=lambda answers: str(answers[first]))
            assert kept == sorted(person.rounds, key=lambda answers: str(answers[first])), f"STORM_SEED={seed}"
    finally:
        await storages.close()
        await backend.drop()
