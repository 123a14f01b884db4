"""Three webhook replicas of the real `python main.py` on one database, behind the emulator's round-robin delivery.

The emulator plays Telegram and the load balancer: it posts each chat's
updates one at a time, spread over the replicas in turn, and posts an update
again when a replica fails or is gone. On PostgreSQL and on MongoDB; no lock
is shared across the replicas: the fenced commit keeps one user's updates
from overwriting each other (bot/apply_once.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import random
import signal
import sys
from asyncio.subprocess import PIPE
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import ClientSession

from bot.emulator import BotAPIEmulator, running_emulator
from bot.outbox import TAKEOVER_SECONDS
from states import InvalidAnswer, Question
from tests.support.backends import SQL_URL_VARIABLES, Backend, backend_params, make_backend
from tests.support.bot_process import ROOT, BotProcess, bot_environment, drop_bot_tables, finish
from tests.support.pushback import chaos, everyone_fills_in
from tests.support.questionnaire import (
    asked,
    bot_replies,
    conversation,
    exchanges,
    replies,
    saved,
    shows_summary,
    told_apart,
    typed,
)
from tests.support.webhook import SECRET, free_port, until_healthy

pytestmark = pytest.mark.asyncio(loop_scope="module")

REPLICAS = 3
PATH = "/telegram/updates"
_message_ids = itertools.count(10_000_000)


@dataclass
class Deployment:
    emulator: BotAPIEmulator
    replicas: list[BotProcess]
    addresses: list[str]
    backend: Backend

    async def post(self, replica: int, update: dict[str, Any]) -> int:
        """Post `update` straight to one replica, as Telegram's retry of a timed-out request can."""
        headers = {"X-Telegram-Bot-Api-Secret-Token": SECRET}
        async with ClientSession() as session, session.post(self.addresses[replica], json=update, headers=headers) as r:
            return r.status

    def update(self, user_id: int, text: str) -> dict[str, Any]:
        """An update as the emulator would make it, with an id of its own."""
        self.emulator.users.setdefault(user_id, {"id": user_id, "is_bot": False, "first_name": f"User {user_id}"})
        message_id = next(_message_ids)
        return {
            "update_id": message_id,
            "message": {
                "message_id": message_id,
                "date": 0,
                "chat": {"id": user_id, "type": "private", "first_name": f"User {user_id}"},
                "from": self.emulator.users[user_id],
                "text": text,
            },
        }


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=backend_params("postgresql", "mongo-pymongo"))
async def deployment(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Deployment]:
    folder = tmp_path_factory.mktemp(f"replicas-{request.param}")
    mongo = request.getfixturevalue("mongo_url") if request.param.startswith("mongo") else None
    backend = make_backend(request.param, folder, mongo)
    if backend.name in SQL_URL_VARIABLES:
        await drop_bot_tables(backend.url)
    ports = [free_port() for _ in range(REPLICAS)]
    async with running_emulator(BotAPIEmulator()) as (emulator, api_url), contextlib.AsyncExitStack() as running:
        replicas = []
        for number, port in enumerate(ports):
            environment = bot_environment(backend, folder) | {
                "WEBHOOK_URL": f"https://bot.example{PATH}",  # the load balancer's address
                "WEBHOOK_SECRET": SECRET,
                "WEB_SERVER_HOST": "127.0.0.1",
                "WEB_SERVER_PORT": str(port),
            }
            replica = await running.enter_async_context(
                BotProcess(emulator, api_url, folder / f"replica-{number}.log", environment)
            )
            await replica.start(ready_on="setWebhook")
            replicas.append(replica)
        for port in ports:
            await until_healthy(f"http://127.0.0.1:{port}")
        addresses = [f"http://127.0.0.1:{port}{PATH}" for port in ports]
        emulator.webhook_targets = addresses
        yield Deployment(emulator, replicas, addresses, backend)
        for replica in replicas:
            await replica.stop(signal.SIGTERM)
    if backend.is_mongo:
        await backend.drop()


async def fill_in(deployment: Deployment, user_id: int) -> str:
    """The questionnaire, each answer sent once its question came; the summary.

    A replica that dies after answering but before Telegram got its 200 has that
    update posted again, and the reply comes a second time: so each step waits for
    its own answer rather than for the next message.
    """
    replica = deployment.replicas[0]  # any: the emulator spreads the deliveries
    messages = conversation(**named(user_id))
    for text, answer in zip(messages, bot_replies(messages, saved(**named(user_id))), strict=True):
        await deployment.emulator.user_sends(user_id, {"text": text})
        # A replica killed after a commit leaves its calls to another's sweep (after 30 s, docs/delivery.md).
        texts = await replica.wait_for(user_id, answer, wait=TAKEOVER_SECONDS + 30)
    return next(text for text in texts if shows_summary(text, **named(user_id)))


def takes(question: Question, text: str) -> bool:
    try:
        question.read(text)
    except InvalidAnswer:
        return False
    return True


def named(user_id: int) -> dict[str, str]:
    return told_apart(f"User{user_id}")


async def test_a_hundred_users_through_three_replicas(deployment: Deployment) -> None:
    users = range(1, 101)
    summaries = await asyncio.gather(*(fill_in(deployment, user_id) for user_id in users))
    for user_id, summary in zip(users, summaries, strict=True):
        assert shows_summary(summary, **named(user_id))
    served = [replica.output().count("is handled") for replica in deployment.replicas]
    assert all(served), f"every replica handles updates: {served}"


async def test_one_update_posted_to_two_replicas_at_once_is_applied_once(deployment: Deployment) -> None:
    user = 200
    *before, (last, summary) = exchanges()  # the last answer posted twice
    await deployment.replicas[0].say(user, *(text for text, _ in before))
    answer = deployment.update(user, last)

    assert list(await asyncio.gather(deployment.post(0, answer), deployment.post(1, answer))) == [200, 200]

    # Answered once committed; the reply follows from the outbox.
    settled = len(before)
    texts = [m["text"] for m in await deployment.emulator.bot_messages(user, settled + 1, wait=20)]
    await asyncio.sleep(1)  # a second reply, if one were sent twice, would be here by now
    texts = [m["text"] for m in await deployment.emulator.bot_messages(user)]
    assert texts[settled:] == [summary] * len(texts[settled:])  # the summary, perhaps twice; nothing else


async def test_one_users_updates_on_three_replicas_at_once_are_handled_one_at_a_time(
    deployment: Deployment,
) -> None:
    """Three names at once: one is taken, and the next two meet the second question, not a lost write."""
    user = 300
    await deployment.replicas[0].say(user, "/start")
    first = asked()[0]
    texts = [text for text in ("Ann", "Bob", "Cid", "30", "41", "18") if takes(first, text)][:3]
    answers = [deployment.update(user, text) for text in texts]

    await asyncio.gather(*(deployment.post(n, update) for n, update in enumerate(answers)))

    said = [m["text"] for m in await deployment.emulator.bot_messages(user, 4, wait=20)][1:]
    assert len(said) == 3, said
    taken = [replies(**{first.key: text})[1] for text in texts]  # the reply to each as the first answer
    assert sum(reply in taken for reply in said) == 1, said  # one taken as it; the others came after it


async def test_a_replica_killed_mid_flow_loses_no_acknowledged_answer(deployment: Deployment) -> None:
    async def user(user_id: int) -> str:
        await asyncio.sleep(user_id % 10 * 0.05)
        return await fill_in(deployment, user_id)

    users = range(400, 430)
    flows = asyncio.gather(*(user(user_id) for user_id in users))
    await asyncio.sleep(0.3)
    assert await deployment.replicas[2].stop(signal.SIGKILL) == -signal.SIGKILL
    summaries = await flows
    for user_id, summary in zip(users, summaries, strict=True):
        assert shows_summary(summary, **named(user_id))
    await deployment.replicas[2].start(ready_on="setWebhook")


@pytest.mark.timeout(900)
async def test_every_reply_arrives_in_order_while_telegram_pushes_back(deployment: Deployment) -> None:
    """tests/test_telegram_faults.py's scenario through three replicas: a 429 of 20 s among many.

    Each replica learns of a flood wait from its own refused call, so the
    replicas may each send once into it; nothing is lost or misordered.
    """
    if deployment.backend.name != "postgresql":
        pytest.skip("the long scenario runs once per backend: MongoDB polls in tests/test_telegram_faults.py")
    seed = int(os.environ.get("FAULTS_SEED") or random.randrange(10**6))
    pushing_back = deployment.emulator.chaos = chaos(long_retry_after=20, seed=seed)
    try:
        results = await everyone_fills_in(deployment.emulator, seed, first_user=5_000)
    finally:
        deployment.emulator.chaos = None
    for user_id, (expected, got) in results.items():
        assert got == expected, f"user {user_id} (FAULTS_SEED={seed})"
    assert pushing_back.refused["429"] > 0
    # Waited out in the outbox of the replica that met it, not by Telegram posting the update again.
    assert any("before sending into this chat again" in replica.output() for replica in deployment.replicas)


async def test_make_replicas_shows_each_message_taken_by_a_replica(tmp_path: Path) -> None:
    url = os.environ.get("POSTGRES_TEST_URL")
    if not url:
        pytest.skip("POSTGRES_TEST_URL is not set")
    await drop_bot_tables(url)
    (tmp_path / ".env").write_text(f"DATABASE_URL={url}\n")
    env = {k: v for k, v in os.environ.items() if k not in {"BOT_TOKEN", "STORAGE", "DATABASE_URL"}}
    demo = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot.emulator.replicas", "--env-file", str(tmp_path / ".env"),
        cwd=ROOT, env=env, stdin=PIPE, stdout=PIPE, stderr=PIPE,
    )  # fmt: skip
    lines = [str(len(q.choices)) if q.choices else text for q, text in zip(asked(), typed(), strict=True)]
    shown, errors = await finish(demo, 120, "".join(f"{line}\n" for line in ["/start", *lines]).encode())

    assert demo.returncode == 0, errors
    assert shows_summary(shown, **{q.key: q.choices[-1] for q in asked() if q.choices})
    assert all(f"-> replica {number}: handled" in shown for number in (1, 2, 3)), shown
