"""An update delivered again (after a crash, before it was confirmed) is applied once and answered again."""

from __future__ import annotations

from typing import Any

import pytest
from aiogram import Bot
from aiogram.exceptions import TelegramNetworkError
from aiogram.methods import SendMessage, TelegramMethod
from aiogram.types import ReplyKeyboardRemove, Update

from bot.outbox import handle_update
from handlers import questionnaire
from handlers.errors import SOMETHING_WENT_WRONG
from tests.support.chat import ChatHarness
from tests.support.questionnaire import asked, conversation, saved, saved_first, shows_summary, typed


async def deliver(chat: ChatHarness, update: Update) -> list[SendMessage]:
    """Feed `update` as polling would; the messages the bot sent for it."""
    before = len(chat.session.sent_messages())
    await handle_update(chat.dispatcher, chat.bot, update, patience=0)
    return chat.session.sent_messages()[before:]


def fail_next_send(chat: ChatHarness, monkeypatch: pytest.MonkeyPatch) -> None:
    """The next sendMessage dies on the network, as if the process were killed before sending."""
    real = chat.session.make_request

    async def once(bot: Bot, method: TelegramMethod[Any], timeout: int | None = None) -> Any:  # noqa: ASYNC109
        if isinstance(method, SendMessage):
            monkeypatch.setattr(chat.session, "make_request", real)
            raise TelegramNetworkError(method=method, message="connection reset")
        return await real(bot, method, timeout)

    monkeypatch.setattr(chat.session, "make_request", once)


async def test_an_answer_delivered_again_is_not_filed_under_the_next_question(chat: ChatHarness) -> None:
    for text in conversation()[:2]:
        await chat.send(text)
    age = chat.update(1, typed()[1])
    [first] = await deliver(chat, age)

    [again] = await deliver(chat, age)

    assert await chat.state() == asked()[2].state
    assert await chat.answers() == saved_first(2)
    assert again.text == first.text
    assert asked()[2].prompt in again.text
    assert again.reply_markup == first.reply_markup


async def test_a_reply_lost_after_the_answer_was_saved_is_sent_when_the_update_comes_back(
    chat: ChatHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    for text in conversation()[:2]:
        await chat.send(text)
    age = chat.update(1, typed()[1])
    fail_next_send(chat, monkeypatch)

    with pytest.raises(TelegramNetworkError):  # left unconfirmed: Telegram delivers it again
        await deliver(chat, age)
    assert await chat.answers() == saved_first(2)
    assert not [m for m in chat.session.sent_messages() if m.text == SOMETHING_WENT_WRONG]

    [reply] = await deliver(chat, age)
    assert asked()[2].prompt in reply.text
    assert await chat.state() == asked()[2].state


async def test_the_last_answer_delivered_again_gets_the_summary_not_send_start(
    chat: ChatHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    *first, last = conversation()
    for text in first:
        await chat.send(text)
    colour = chat.update(1, last)
    fail_next_send(chat, monkeypatch)
    with pytest.raises(TelegramNetworkError):
        await deliver(chat, colour)

    [summary] = await deliver(chat, colour)

    assert shows_summary(summary.text)
    assert isinstance(summary.reply_markup, ReplyKeyboardRemove)
    assert summary.parse_mode == "HTML"
    [response] = await chat.storages.responses.for_user(1)
    assert response.answers == saved()


async def test_an_older_update_delivered_again_changes_nothing_and_says_nothing(chat: ChatHarness) -> None:
    await chat.send("/start")
    name = chat.update(1, typed()[0])
    await deliver(chat, name)
    await chat.send(typed()[1])

    assert await deliver(chat, name) == []
    assert await chat.state() == asked()[2].state
    assert await chat.answers() == saved_first(2)


async def test_a_handler_that_fails_half_way_writes_nothing(chat: ChatHarness, monkeypatch: pytest.MonkeyPatch) -> None:
    *first, last = conversation()
    for text in first:
        await chat.send(text)

    def broken(*_: Any) -> str:
        raise RuntimeError("a bug after the state was cleared")

    monkeypatch.setattr(questionnaire, "summary", broken)
    assert await chat.send(last) == [SOMETHING_WENT_WRONG]

    assert await chat.state() == asked()[-1].state
    assert await chat.answers() == saved_first(len(asked()) - 1)
