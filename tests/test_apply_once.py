"""An update delivered again (after a crash, before it was confirmed) is applied once and answered again."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiogram import Bot
from aiogram.exceptions import TelegramNetworkError
from aiogram.fsm.storage.base import StorageKey
from aiogram.fsm.storage.memory import MemoryStorage
from aiogram.methods import SendMessage, TelegramMethod
from aiogram.types import ReplyKeyboardRemove, Update

from bot.apply_once import PendingChanges
from bot.outbox import (
    APPLIED,
    AppliedRecord,
    Courier,
    Delivery,
    OwnKeyWriteError,
    UpdateStorage,
    call_entry,
    handle_update,
)
from handlers import forms
from handlers.errors import SOMETHING_WENT_WRONG
from handlers.forms import RESPONSE_ID
from states import next_question
from tests.support.backends import storage_key
from tests.support.chat import ChatHarness
from tests.support.questionnaire import asked, conversation, saved, saved_first, shows_summary, typed, what_follows


async def deliver(chat: ChatHarness, update: Update) -> list[SendMessage]:
    """Feed `update` as polling would; the messages the bot sent for it."""
    before = len(chat.session.sent_messages())
    await handle_update(chat.dispatcher, chat.bot, update)
    return chat.session.sent_messages()[before:]


def fail_next_send(chat: ChatHarness, monkeypatch: pytest.MonkeyPatch) -> None:
    """The next sendMessage dies on the network."""
    real = chat.session.make_request

    async def once(bot: Bot, method: TelegramMethod[Any], timeout: int | None = None) -> Any:  # noqa: ASYNC109
        if isinstance(method, SendMessage):
            monkeypatch.setattr(chat.session, "make_request", real)
            raise TelegramNetworkError(method=method, message="connection reset")
        return await real(bot, method, timeout)

    monkeypatch.setattr(chat.session, "make_request", once)


def crash_after_commits(chat: ChatHarness, monkeypatch: pytest.MonkeyPatch) -> None:
    """From now on the process dies right after each commit: nothing committed is carried out."""

    async def killed(self: Courier, delivery: Delivery) -> None:
        pass

    monkeypatch.setattr(Courier, "carry_now", killed)


async def restart_and_pick_up(chat: ChatHarness, monkeypatch: pytest.MonkeyPatch) -> None:
    """A new process on the same database: its courier picks up what waits in the outbox."""
    monkeypatch.undo()
    await chat.restart()
    courier = chat.dispatcher["courier"]
    await courier.start(chat.bot)
    await courier.idle()
    await courier.stop(5)


async def test_an_answer_delivered_again_is_not_filed_under_the_next_question(chat: ChatHarness) -> None:
    await chat.send("/start")
    answer = chat.update(1, typed()[0])
    [first] = await deliver(chat, answer)
    assert asked()[1].prompt in first.text

    assert await deliver(chat, answer) == []  # applied and answered already: neither again

    assert await chat.state() == asked()[1].state
    assert await chat.answers() == saved_first(1)


async def test_a_refused_answer_delivered_again_after_a_restart_is_not_filed_under_a_later_question(
    chat: ChatHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 25, Why 1: a bad answer ("Green" to the age), then a good one; both come again after a
    restart (Telegram's offset had not passed them). "Green" changed nothing but is recorded: it is
    not taken as the next question's answer."""
    await chat.send("/start")
    wrong = chat.update(1, "   ")  # refused by every question: an empty answer
    right = chat.update(1, typed()[0])
    [refusal] = await deliver(chat, wrong)
    assert asked()[0].prompt in refusal.text
    await deliver(chat, right)

    await chat.restart()
    assert await deliver(chat, wrong) == []
    assert await deliver(chat, right) == []

    assert await chat.state() == asked()[1].state
    assert await chat.answers() == saved_first(1)


async def test_a_reply_committed_before_a_crash_goes_out_from_the_outbox_after_the_restart(
    chat: ChatHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    await chat.send("/start")
    answer = chat.update(1, typed()[0])
    crash_after_commits(chat, monkeypatch)
    assert await deliver(chat, answer) == []  # committed, then the process died
    assert await chat.answers() == saved_first(1)

    before = len(chat.session.sent_messages())
    await restart_and_pick_up(chat, monkeypatch)
    [reply] = chat.session.sent_messages()[before:]
    assert asked()[1].prompt in reply.text

    assert await deliver(chat, answer) == []  # Telegram delivers it again too: nothing more
    assert await chat.state() == asked()[1].state


async def test_a_reply_put_off_by_pacing_when_the_process_died_goes_out_at_the_next_start(
    chat: ChatHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Polling is the bot's only process: its start takes all that waits, also a reply put off for a while."""
    await chat.send("/start")
    crash_after_commits(chat, monkeypatch)
    await deliver(chat, chat.update(1, typed()[0]))
    # Held back under the bot's pace, the courier put the key off (as a replica would leave it alone)...
    await chat.storages.fsm.postpone_outbox(storage_key(1), datetime.now(UTC) + timedelta(seconds=40))
    # ...and the process died before sending it.
    before = len(chat.session.sent_messages())
    await restart_and_pick_up(chat, monkeypatch)

    [reply] = chat.session.sent_messages()[before:]
    assert asked()[1].prompt in reply.text


async def test_the_last_answer_committed_before_a_crash_saves_once_and_gets_the_summary(
    chat: ChatHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    *first, last = conversation()
    for text in first:
        await chat.send(text)
    colour = chat.update(1, last)
    crash_after_commits(chat, monkeypatch)
    await deliver(chat, colour)
    assert await chat.storages.responses.for_user(1) == []  # saved with the commit, not yet carried out

    before = len(chat.session.sent_messages())
    await restart_and_pick_up(chat, monkeypatch)
    [summary] = chat.session.sent_messages()[before:]
    assert await deliver(chat, colour) == []

    assert shows_summary(summary.text)
    assert isinstance(summary.reply_markup, ReplyKeyboardRemove)
    assert summary.parse_mode == "HTML"
    [response] = await chat.storages.responses.for_user(1)
    assert response.answers == saved()


async def test_a_send_telegram_drops_is_tried_again_until_it_goes_through(
    chat: ChatHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    await chat.send("/start")
    fail_next_send(chat, monkeypatch)

    [reply] = await deliver(chat, chat.update(1, typed()[0]))

    assert asked()[1].prompt in reply.text
    assert not [m for m in chat.session.sent_messages() if m.text == SOMETHING_WENT_WRONG]


async def test_an_older_update_delivered_again_changes_nothing_and_says_nothing(chat: ChatHarness) -> None:
    await chat.send("/start")
    name = chat.update(1, typed()[0])
    await deliver(chat, name)
    await chat.send(typed()[1])
    third = next_question(asked()[1])  # None: the questionnaire is done

    assert await deliver(chat, name) == []
    assert await chat.state() == (third.state if third else None)
    assert await chat.answers() == (saved_first(2) if third else {})


async def test_a_handler_that_fails_half_way_writes_nothing(chat: ChatHarness, monkeypatch: pytest.MonkeyPatch) -> None:
    *first, last = conversation()
    for text in first:
        await chat.send(text)

    def broken(*_: Any) -> str:
        raise RuntimeError("a bug after the state was cleared")

    monkeypatch.setattr(forms, "say_in", broken)  # the summary's message, built after the state is cleared
    assert await chat.send(last) == [SOMETHING_WENT_WRONG]

    assert await chat.state() == asked()[-1].state
    assert await chat.answers() == saved_first(len(asked()) - 1)


async def test_a_completed_form_is_not_saved_when_its_commit_loses(
    chat: ChatHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 25, Why 2: the same user's /forget (another chat, another process) lands between the last
    answer's read and its commit. The commit loses and the handler runs again on what is there now: the
    form it completed the first time must not stay saved."""
    *first, last = conversation()
    for text in first:
        await chat.send(text)
    fsm = chat.storages.fsm
    real = fsm.swap_with_outbox

    async def forgotten_meanwhile(*args: Any, **kwargs: Any) -> bool:
        monkeypatch.setattr(fsm, "swap_with_outbox", real)
        await fsm.delete_user(1)  # the other process's /forget
        return await real(*args, **kwargs)

    monkeypatch.setattr(fsm, "swap_with_outbox", forgotten_meanwhile)
    [reply] = await chat.send(last)

    assert not shows_summary(reply)
    assert await chat.storages.responses.for_user(1) == []


async def test_forget_delivered_again_deletes_nothing_saved_after_it(chat: ChatHarness) -> None:
    """Issue 25, Why 3: /forget, then a new questionnaire; Telegram delivers the /forget again."""
    for text in conversation():
        await chat.send(text)
    forget = chat.update(1, "/forget")
    [done] = await deliver(chat, forget)
    assert "1 finished form" in done.text
    assert await chat.storages.responses.for_user(1) == []
    for text in conversation():
        await chat.send(text)

    assert await deliver(chat, forget) == []

    [kept] = await chat.storages.responses.for_user(1)
    assert kept.answers == saved()


async def test_a_record_of_the_wrong_shape_does_not_stop_the_bot(chat: ChatHarness) -> None:
    """Issue 25, Why 9: an applied-updates record written by hand (or damaged) made every command fail."""
    await chat.send("/start")
    await chat.storages.fsm.set_data(storage_key(1), {APPLIED: ["not", "a", "record"]})

    [reply] = await chat.send("/start")

    assert reply.endswith(asked()[0].prompt)
    [reply] = await chat.send(typed()[0])
    assert reply.endswith(what_follows(asked()[0]))


async def test_an_older_session_without_a_response_id_saves_once_whatever_the_attempts(
    chat: ChatHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 25, Why 9: a conversation started before response ids existed got a new id on each attempt."""
    *first, last = conversation()
    for text in first:
        await chat.send(text)
    data = await chat.storages.fsm.get_data(storage_key(1))
    del data[RESPONSE_ID]
    await chat.storages.fsm.set_data(storage_key(1), data)
    update = chat.update(1, last)
    fsm = chat.storages.fsm
    real = fsm.swap_with_outbox

    async def lost(*args: Any, **kwargs: Any) -> bool:  # another writer came first, once
        monkeypatch.setattr(fsm, "swap_with_outbox", real)
        return False

    monkeypatch.setattr(fsm, "swap_with_outbox", lost)
    await deliver(chat, update)
    await chat.restart()
    await deliver(chat, update)

    [response] = await chat.storages.responses.for_user(1)
    assert response.answers == saved()


async def test_writing_the_handlers_own_key_through_fsm_storage_is_refused_with_what_to_do() -> None:
    key = StorageKey(bot_id=1, chat_id=2, user_id=2)
    storage = UpdateStorage(MemoryStorage(), key, [])
    with pytest.raises(OwnKeyWriteError, match="use its FSMContext"):
        await storage.set_state(key, "somewhere")
    other = StorageKey(bot_id=1, chat_id=3, user_id=3)
    await storage.set_state(other, "somewhere")  # another user's key: as the storage has it
    assert await storage.get_state(other) == "somewhere"


async def test_a_write_to_fsmcontext_after_the_handler_returned_raises() -> None:
    key = StorageKey(bot_id=1, chat_id=2, user_id=2)
    changes = PendingChanges(key, None, {})
    await changes.set_state(key, "asked")
    changes.closed = True
    with pytest.raises(RuntimeError, match="after its handler returned"):
        await changes.set_data(key, {"late": True})


async def test_a_start_up_takes_only_its_own_bots_waiting_replies(
    chat: ChatHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two bots on one database: each courier carries out its own bot's outbox, never the other's
    (sent with its own token, into a chat of the other bot's)."""
    other = StorageKey(bot_id=chat.bot.id + 1, chat_id=7, user_id=7)
    call = call_entry(chat.bot, SendMessage(chat_id=7, text="the other bot's reply"))
    record = AppliedRecord(updates=[1], queued=1, outbox=[{**call, "seq": 1}], key=other)
    assert await chat.storages.fsm.swap_with_outbox(other, None, None, {APPLIED: record.dump()}, queued=1)
    for text in conversation()[:2]:
        await chat.send(text)
    crash_after_commits(chat, monkeypatch)
    await deliver(chat, chat.update(1, typed()[1]))  # this bot's reply, left waiting by a crash
    before = len(chat.session.sent_messages())

    await restart_and_pick_up(chat, monkeypatch)

    [reply] = chat.session.sent_messages()[before:]
    assert reply.chat_id == 1
    assert [due.data[APPLIED]["key"] for due in await chat.storages.fsm.due_outboxes(datetime.now(UTC), 10)]
