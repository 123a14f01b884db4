"""bot/retry.py: retry what Telegram did not accept, never a message that may already be in the chat."""

from __future__ import annotations

from typing import Any

import pytest
from aiogram import Bot
from aiogram.exceptions import TelegramNetworkError, TelegramRetryAfter, TelegramServerError
from aiogram.methods import GetMe, SendMessage, TelegramMethod

from bot.retry import RetryRequests
from tests.support.backends import TOKEN


class Failing:
    """A request chain that raises `errors` in turn, then answers True; it counts the calls."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def __call__(self, bot: Bot, method: TelegramMethod[Any]) -> Any:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return True


SEND = SendMessage(chat_id=1, text="hello")


async def test_a_send_that_timed_out_is_not_sent_again() -> None:
    """The request may have reached Telegram: a retry could show the user the message twice."""
    chain = Failing(TelegramNetworkError(method=SEND, message="Request timeout error"))
    with pytest.raises(TelegramNetworkError):
        await RetryRequests(backoff=0)(chain, Bot(TOKEN), SEND)
    assert chain.calls == 1


@pytest.mark.parametrize(
    "error",
    [
        TelegramServerError(method=SEND, message="Bad Gateway"),
        TelegramRetryAfter(method=SEND, message="Too Many Requests", retry_after=0),
    ],
    ids=["5xx", "429"],
)
async def test_what_telegram_refused_is_sent_again(error: Exception) -> None:
    chain = Failing(error)
    answered: Any = await RetryRequests(backoff=0)(chain, Bot(TOKEN), SEND)
    assert answered is True
    assert chain.calls == 2


async def test_a_request_that_changes_nothing_is_retried_after_a_network_error() -> None:
    chain = Failing(TelegramNetworkError(method=GetMe(), message="Request timeout error"))
    answered: Any = await RetryRequests(backoff=0)(chain, Bot(TOKEN), GetMe())
    assert answered is True
    assert chain.calls == 2
