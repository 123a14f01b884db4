"""Prometheus metrics of the real `python main.py`, scraped as Prometheus would while the emulator misbehaves.

Polling serves /metrics on METRICS_PORT, the webhook server on its own port;
each test reads the counters before and after what a user does and sees them move.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import pytest_asyncio
from aiohttp import ClientConnectionError, ClientSession
from prometheus_client.parser import text_string_to_metric_families

from bot.emulator import BotAPIEmulator, Fault, running_emulator
from config import SettingsError, load_settings
from tests.support.backends import TOKEN
from tests.support.bot_process import BotProcess
from tests.support.questionnaire import asked, typed, what_follows
from tests.support.webhook import free_port, until_healthy, webhook_environment

# The polling bot is one process for the module: its tests share its event loop.
in_module_loop = pytest.mark.asyncio(loop_scope="module")

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
# Every label the bot's own metrics may carry: none names a user or a chat.
BOUNDED_LABELS = {"outcome", "method", "code", "kind", "where", "result", "le"}


async def scrape(url: str) -> Samples:
    async with ClientSession() as session, session.get(url) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = await response.text()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


async def until(url: str, condition: Callable[[Samples], bool], seconds: float = 30) -> Samples:
    """Scrape until `condition` holds (the bot changes the numbers as it works)."""
    samples: Samples = {}
    try:
        async with asyncio.timeout(seconds):
            while not condition(samples := await scrape(url)):  # noqa: ASYNC110 - another process's numbers
                await asyncio.sleep(0.1)
    except TimeoutError:
        bot_lines = {key: v for key, v in samples.items() if key[0].startswith("bot_")}
        msg = f"the metrics did not get there within {seconds} s: {bot_lines}"
        raise AssertionError(msg) from None
    return samples


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def polling(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple[BotProcess, str]]:
    folder = tmp_path_factory.mktemp("metrics-polling")
    port = free_port()
    async with (
        running_emulator(BotAPIEmulator()) as (emulator, api_url),
        BotProcess(
            emulator,
            api_url,
            folder / "bot.log",
            {
                "DATABASE_URL": f"sqlite+aiosqlite:///{folder / 'bot.db'}",
                "METRICS_PORT": str(port),
                "WEB_SERVER_HOST": "127.0.0.1",
                "FSM_TTL": "8s",  # a sweep every 2 s
            },
        ) as process,
    ):
        await process.start()
        url = f"http://127.0.0.1:{port}/metrics"
        yield process, url
        assert await process.stop(signal.SIGTERM) == 0
    with pytest.raises(ClientConnectionError):  # the listener stopped with the bot
        await scrape(url)


@in_module_loop
async def test_polling_serves_every_metric_from_the_start_with_bounded_labels(
    polling: tuple[BotProcess, str],
) -> None:
    _, url = polling
    samples = await scrape(url)
    names = {name for name, _ in samples}
    for outcome in ("applied", "already_applied", "failed", "redelivery"):
        assert ("bot_updates_total", frozenset({("outcome", outcome)})) in samples
    for name in (
        "bot_update_handling_seconds_count",
        "bot_replies_waiting",
        "bot_lock_wait_seconds_count",
        "bot_commit_conflicts_total",
        "process_resident_memory_bytes",
    ):
        assert name in names
    assert samples[("bot_polling_leader", frozenset())] == 1  # the only polling process leads
    for name, labels in samples:
        if name.startswith("bot_"):
            assert {label for label, _ in labels} <= BOUNDED_LABELS, name


@in_module_loop
async def test_a_reply_waiting_out_a_429_is_seen_waiting_then_sent(polling: tuple[BotProcess, str]) -> None:
    bot, url = polling
    before = await scrape(url)
    bot.emulator.faults.append(Fault(method="sendMessage", status=429, count=1, retry_after=3))
    await bot.emulator.user_sends(1, {"text": "/start"})

    waiting = await until(url, lambda s: value(s, "bot_replies_waiting") == 1)
    assert value(waiting, "bot_telegram_errors_total", method="sendMessage", code="429") == 1
    await bot.wait_for(1, asked()[0].prompt)
    after = await until(url, lambda s: value(s, "bot_replies_waiting") == 0)
    assert moved(before, after, "bot_updates_total", outcome="applied") == 1
    assert moved(before, after, "bot_update_handling_seconds_count") == 1
    # Its handling ended with the commit: the 429 (3 s) is waited out in the outbox, not inside it.
    assert moved(before, after, "bot_update_handling_seconds_bucket", le="2.5") == 1
    assert moved(before, after, "bot_lock_wait_seconds_count") == 1


@in_module_loop
async def test_a_reply_refused_with_502s_is_tried_again_and_each_refusal_counted(
    polling: tuple[BotProcess, str],
) -> None:
    """Polling keeps trying a refused reply in its chat's lane: one update applied, three 5xx answers."""
    bot, url = polling
    await bot.say(2, "/start")
    before = await scrape(url)
    bot.emulator.faults.append(Fault(method="sendMessage", status=502, count=3))
    await bot.emulator.user_sends(2, {"text": typed()[0]})
    await bot.wait_for(2, what_follows(asked()[0]))
    after = await until(url, lambda s: moved(before, s, "bot_updates_total", outcome="applied") == 1)
    assert moved(before, after, "bot_telegram_errors_total", method="sendMessage", code="5xx") == 3
    assert moved(before, after, "bot_updates_total", outcome="redelivery") == 0
    assert value(after, "bot_replies_waiting") == 0


@in_module_loop
async def test_expiry_sweeps_and_what_they_remove_are_counted(polling: tuple[BotProcess, str]) -> None:
    bot, url = polling
    await bot.say(3, "/start")  # then left alone for more than FSM_TTL
    samples = await until(url, lambda s: value(s, "bot_expired_conversations_total") >= 1, seconds=40)
    assert value(samples, "bot_expiry_sweeps_total", result="ok") >= 1
    assert value(samples, "bot_expiry_sweeps_total", result="failed") == 0


@in_module_loop
async def test_the_webhook_server_serves_metrics_that_move_through_a_429_and_the_outbox(tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    url = f"{base}/metrics"
    async with (
        running_emulator(BotAPIEmulator()) as (emulator, api_url),
        BotProcess(emulator, api_url, tmp_path / "bot.log", webhook_environment(port, tmp_path / "bot.db")) as process,
    ):
        await process.start(ready_on="setWebhook")
        await until_healthy(base)
        before = await scrape(url)
        assert value(before, "bot_updates_total", outcome="applied") == 0
        assert ("bot_polling_leader", frozenset()) not in before  # no "nobody polls" from a replica
        emulator.faults.append(Fault(method="sendMessage", status=429, count=1, retry_after=1))
        await process.say(1, "/start")
        after = await until(url, lambda s: moved(before, s, "bot_updates_total", outcome="applied") == 1)
        assert moved(before, after, "bot_telegram_errors_total", method="sendMessage", code="429") == 1
        assert value(after, "bot_replies_waiting") == 0

        # A long 429: the update is done once committed (200); its reply waits in the outbox, then goes out.
        before = after
        emulator.faults.append(Fault(method="sendMessage", status=429, count=1, retry_after=3))
        await emulator.user_sends(1, {"text": typed()[0]})
        during = await until(url, lambda s: moved(before, s, "bot_updates_total", outcome="applied") == 1)
        assert value(during, "bot_replies_waiting") == 1
        after = await until(url, lambda s: value(s, "bot_replies_waiting") == 0)
        assert moved(before, after, "bot_updates_total", outcome="redelivery") == 0
        assert moved(before, after, "bot_telegram_errors_total", method="sendMessage", code="429") == 1
        assert await process.stop(signal.SIGTERM) == 0


@pytest.mark.parametrize(
    ("settings", "refusal"),
    [
        ("METRICS_PORT=0", "METRICS_PORT: Input should be greater than or equal to 1"),
        ("METRICS_PORT=65536", "METRICS_PORT: Input should be less than or equal to 65535"),
        (
            "WEBHOOK_URL=https://bot.example.com/hook\nWEBHOOK_SECRET=s\nWEB_SERVER_PORT=8080\nMETRICS_PORT=8080",
            "METRICS_PORT is WEB_SERVER_PORT: the webhook server has /metrics already",
        ),
    ],
    ids=["zero", "too-high", "the-webhook-port"],
)
def test_a_bad_metrics_port_is_refused_by_name(tmp_path: Path, settings: str, refusal: str) -> None:
    env = tmp_path / ".env"
    env.write_text(f"BOT_TOKEN={TOKEN}\n{settings}\n")
    with pytest.raises(SettingsError) as refused:
        load_settings(env)
    assert str(refused.value).startswith(refusal)
