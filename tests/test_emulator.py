"""The Bot API emulator answers as Telegram does, as seen by aiogram's own client and by raw HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiogram import Bot
from aiogram.client.default import DefaultBotProperties
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.enums import ParseMode
from aiogram.exceptions import TelegramBadRequest, TelegramConflictError, TelegramRetryAfter
from aiogram.types import (
    BotCommand,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    KeyboardButton,
    Message,
    ReplyKeyboardMarkup,
    ReplyKeyboardRemove,
)
from aiohttp import ClientSession, web

from bot.emulator import BotAPIEmulator, Chaos, FloodControl, FloodLimits, running_emulator


@pytest.fixture
async def served() -> AsyncIterator[tuple[BotAPIEmulator, str]]:
    async with running_emulator() as (emulator, url):
        yield emulator, url


@pytest.fixture
async def bot(served: tuple[BotAPIEmulator, str]) -> AsyncIterator[Bot]:
    emulator, url = served
    session = AiohttpSession(api=TelegramAPIServer.from_base(url))
    bot = Bot(emulator.token, session=session, default=DefaultBotProperties(parse_mode=ParseMode.HTML))
    yield bot
    await bot.session.close()


async def raw(url: str, path: str, **payload: Any) -> tuple[int, dict[str, Any]]:
    async with ClientSession() as http, http.post(f"{url}{path}", json=payload) as response:
        return response.status, await response.json()


async def test_get_me_is_a_full_bot_user(bot: Bot) -> None:
    me = await bot.get_me()
    assert me.is_bot
    assert me.username
    assert me.id == bot.id


async def test_wrong_token_and_unknown_method_answer_like_telegram(
    served: tuple[BotAPIEmulator, str],
) -> None:
    emulator, url = served
    assert await raw(url, "/bot1:wrong/getMe") == (
        401,
        {"ok": False, "error_code": 401, "description": "Unauthorized"},
    )
    assert await raw(url, f"/bot{emulator.token}/noSuchMethod") == (
        404,
        {"ok": False, "error_code": 404, "description": "Not Found"},
    )


async def test_send_message_parses_html_into_entities(served: tuple[BotAPIEmulator, str], bot: Bot) -> None:
    emulator, _ = served
    await emulator.user_sends(7, {"text": "hi"})
    message = await bot.send_message(7, "Hi, <b>Ann &amp; co</b> &lt;3")
    assert message.text == "Hi, Ann & co <3"
    assert message.entities is not None
    assert [(e.type, e.offset, e.length) for e in message.entities] == [("bold", 4, 8)]
    assert message.from_user is not None
    assert message.from_user.is_bot


@pytest.mark.parametrize(
    ("text", "description"),
    [
        ("", "message text is empty"),
        ("<b> </b>", "message text is empty"),
        ("x" * 4097, "message is too long"),
        ("<b>unclosed", "can't parse entities: Can't find end tag corresponding to start tag \"b\""),
        ("<blink>x</blink>", 'can\'t parse entities: Unsupported start tag "blink" at byte offset 0'),
        ("<b>x</i>", 'can\'t parse entities: Unmatched end tag at byte offset 4, expected "</b>", found "</i>"'),
    ],
)
async def test_send_message_refuses_what_telegram_refuses(
    served: tuple[BotAPIEmulator, str], bot: Bot, text: str, description: str
) -> None:
    emulator, _ = served
    await emulator.user_sends(7, {"text": "hi"})
    with pytest.raises(TelegramBadRequest, match=description):
        await bot.send_message(7, text)
    assert await emulator.bot_messages(7) == []


async def test_longest_message_and_unknown_chat(served: tuple[BotAPIEmulator, str], bot: Bot) -> None:
    emulator, _ = served
    await emulator.user_sends(7, {"text": "hi"})
    assert (await bot.send_message(7, "x" * 4096, parse_mode=None)).text == "x" * 4096
    with pytest.raises(TelegramBadRequest, match="chat not found"):
        await bot.send_message(8, "nobody is there")


async def test_reply_keyboard_is_shown_then_removed(served: tuple[BotAPIEmulator, str], bot: Bot) -> None:
    emulator, _ = served
    await emulator.user_sends(7, {"text": "hi"})
    keyboard = ReplyKeyboardMarkup(keyboard=[[KeyboardButton(text="Red"), KeyboardButton(text="Blue")]])
    await bot.send_message(7, "Pick", reply_markup=keyboard)
    assert emulator.keyboard(7) == [["Red", "Blue"]]
    await bot.send_message(7, "Done", reply_markup=ReplyKeyboardRemove())
    assert emulator.keyboard(7) is None


def two_buttons() -> InlineKeyboardMarkup:
    return InlineKeyboardMarkup(
        inline_keyboard=[
            [InlineKeyboardButton(text="Small", callback_data="size:0")],
            [InlineKeyboardButton(text="Large", callback_data="size:1")],
        ]
    )


async def test_a_press_is_a_callback_query_with_the_message_its_button_is_under(
    served: tuple[BotAPIEmulator, str], bot: Bot
) -> None:
    emulator, _ = served
    await emulator.user_sends(7, {"text": "hi"})
    asked = await bot.send_message(7, "Which <b>size</b>?", reply_markup=two_buttons())
    await bot.send_message(7, "no buttons here")
    assert emulator.inline_buttons(7) is None  # the last message has none
    assert emulator.inline_buttons(7, asked.message_id) == [
        [{"text": "Small", "callback_data": "size:0"}],
        [{"text": "Large", "callback_data": "size:1"}],
    ]
    assert emulator.keyboard(7) is None  # inline buttons are the message's, not a keyboard in the user's place
    with pytest.raises(ValueError, match="no inline buttons"):
        await emulator.user_presses(7, "Small")
    with pytest.raises(ValueError, match="no button 'Medium'"):
        await emulator.user_presses(7, "Medium", message_id=asked.message_id)

    first = await bot.get_updates()
    by_label = await emulator.user_presses(7, "Large", message_id=asked.message_id)
    by_place = await emulator.user_presses(7, 0, message_id=asked.message_id)
    updates = await bot.get_updates(offset=first[-1].update_id + 1)
    assert [update.update_id for update in updates] == [by_label["update_id"], by_place["update_id"]]
    pressed = updates[0].callback_query
    assert pressed is not None
    assert pressed.id == by_label["callback_query"]["id"]
    assert pressed.data == "size:1"
    assert updates[1].callback_query is not None
    assert updates[1].callback_query.data == "size:0"
    assert pressed.from_user.id == 7
    assert pressed.chat_instance == updates[1].callback_query.chat_instance
    under = pressed.message
    assert isinstance(under, Message)
    assert (under.message_id, under.chat.id, under.text) == (asked.message_id, 7, "Which size?")
    assert under.from_user is not None
    assert under.from_user.is_bot
    assert under.reply_markup is not None
    assert under.reply_markup.model_dump(exclude_none=True) == two_buttons().model_dump(exclude_none=True)


async def test_answer_callback_query_is_recorded_in_order_and_refused_twice(
    served: tuple[BotAPIEmulator, str], bot: Bot
) -> None:
    emulator, _ = served
    await emulator.user_sends(7, {"text": "hi"})
    await bot.send_message(7, "Which size?", reply_markup=two_buttons())
    press = await emulator.user_presses(7, "Small")
    query = press["callback_query"]["id"]
    assert await emulator.callback_answer(query) is None  # not answered yet: the spinner turns

    assert await bot.answer_callback_query(query, text="Noted", show_alert=True)
    await bot.send_message(7, "Next question")
    [answer] = emulator.callback_answers
    assert answer == await emulator.callback_answer(query)
    assert answer["callback_query_id"] == query
    assert (answer["text"], answer["show_alert"], answer["chat_id"], answer["message_id"]) == ("Noted", True, 7, 1)
    # Made before the next message: the chat held one message then, and the calls list it first.
    assert answer["messages_before"] == 1
    assert emulator.calls[answer["call"]] == "answerCallbackQuery"
    assert emulator.calls[answer["call"] + 1 :].count("sendMessage") == 1

    with pytest.raises(TelegramBadRequest, match="query is too old"):
        await bot.answer_callback_query(query)  # a query is answered once
    with pytest.raises(TelegramBadRequest, match="query ID is invalid"):
        await bot.answer_callback_query("12345")  # no user pressed anything by that id
    assert len(emulator.callback_answers) == 1


async def test_edits_replace_or_remove_the_inline_buttons(served: tuple[BotAPIEmulator, str], bot: Bot) -> None:
    emulator, _ = served
    await emulator.user_sends(7, {"text": "hi"})
    sent = await bot.send_message(7, "Which size?", reply_markup=two_buttons())
    one = InlineKeyboardMarkup(inline_keyboard=[[InlineKeyboardButton(text="Only", callback_data="only")]])
    await bot.edit_message_reply_markup(chat_id=7, message_id=sent.message_id, reply_markup=one)
    assert emulator.inline_buttons(7) == [[{"text": "Only", "callback_data": "only"}]]
    with pytest.raises(TelegramBadRequest, match="message is not modified"):
        await bot.edit_message_reply_markup(chat_id=7, message_id=sent.message_id, reply_markup=one)
    press = await emulator.user_presses(7, "Only")
    assert press["callback_query"]["message"]["reply_markup"] == {
        "inline_keyboard": [[{"text": "Only", "callback_data": "only"}]]
    }
    # Telegram's editMessageText without reply_markup takes the buttons away.
    await bot.edit_message_text("Size: small", chat_id=7, message_id=sent.message_id)
    assert emulator.inline_buttons(7) is None
    await bot.edit_message_text("Size: small", chat_id=7, message_id=sent.message_id, reply_markup=two_buttons())
    assert [[b["text"] for b in row] for row in emulator.inline_buttons(7) or []] == [["Small"], ["Large"]]
    await bot.edit_message_reply_markup(chat_id=7, message_id=sent.message_id)
    assert emulator.inline_buttons(7) is None
    with pytest.raises(TelegramBadRequest, match="message to edit not found"):
        await bot.edit_message_reply_markup(chat_id=7, message_id=99, reply_markup=one)


async def test_a_press_by_webhook_and_over_the_control_api(served: tuple[BotAPIEmulator, str], bot: Bot) -> None:
    emulator, url = served
    received: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def webhook(request: web.Request) -> web.Response:
        await received.put(await request.json())
        return web.Response()

    app = web.Application()
    app.router.add_post("/hook", webhook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        await emulator.user_sends(9, {"text": "hi"})
        await bot.send_message(9, "Which size?", reply_markup=two_buttons())
        assert await bot.set_webhook(f"http://127.0.0.1:{runner.addresses[0][1]}/hook")
        assert "message" in await asyncio.wait_for(received.get(), 10)

        status, body = await raw(url, "/_emulator/users/9/press", button="Large")
        assert status == 200
        delivered = await asyncio.wait_for(received.get(), 10)
        assert delivered == body["update"]
        assert delivered["callback_query"]["data"] == "size:1"
        assert delivered["callback_query"]["message"]["message_id"] == 1
        status, body = await raw(url, "/_emulator/users/9/press", button=0, message_id=1)
        assert status == 200
        assert (await asyncio.wait_for(received.get(), 10))["callback_query"]["data"] == "size:0"
        assert await raw(url, "/_emulator/users/9/press", button="Medium") == (
            400,
            {"ok": False, "description": "message 1 has no button 'Medium'; its buttons: ['Small', 'Large']"},
        )
        assert await bot.answer_callback_query(body["update"]["callback_query"]["id"], text="Noted")
        async with ClientSession() as http, http.get(f"{url}/_emulator/chats/9") as response:
            chat = await response.json()
        assert chat["inline_buttons"] == [
            [{"text": "Small", "callback_data": "size:0"}],
            [{"text": "Large", "callback_data": "size:1"}],
        ]
        assert [answer["text"] for answer in chat["callback_answers"]] == ["Noted"]
    finally:
        await bot.delete_webhook()
        await runner.cleanup()


async def test_get_updates_offset_limit_and_long_polling(served: tuple[BotAPIEmulator, str], bot: Bot) -> None:
    emulator, _ = served
    await emulator.user_sends(7, {"text": "one"}, {"text": "two"}, {"kind": "photo"})
    first = await bot.get_updates(limit=2)
    assert [u.message.text for u in first if u.message] == ["one", "two"]
    rest = await bot.get_updates(offset=first[-1].update_id + 1)
    assert len(rest) == 1
    assert rest[0].message is not None
    assert rest[0].message.photo
    assert len(emulator.updates) == 1  # the confirmed two are gone

    waiting = asyncio.create_task(bot.get_updates(offset=rest[0].update_id + 1, timeout=10))
    await asyncio.sleep(0.1)
    assert not waiting.done()
    await emulator.user_sends(7, {"text": "/start"})
    [update] = await asyncio.wait_for(waiting, 5)
    assert update.message is not None
    assert update.message.text == "/start"
    assert update.message.entities is not None
    assert update.message.entities[0].type == "bot_command"


async def test_an_update_stays_until_a_higher_offset_confirms_it(served: tuple[BotAPIEmulator, str], bot: Bot) -> None:
    emulator, _ = served
    await emulator.user_sends(7, {"text": "one"}, {"text": "two"})
    first = await bot.get_updates()
    assert [u.update_id for u in await bot.get_updates(offset=first[0].update_id)] == [u.update_id for u in first]
    await bot.get_updates(offset=first[0].update_id + 1)
    assert [update["update_id"] for update in emulator.updates] == [first[1].update_id]


async def test_allowed_updates_filters_and_persists(served: tuple[BotAPIEmulator, str], bot: Bot) -> None:
    emulator, _ = served
    await emulator.user_sends(7, {"text": "hello"})
    assert await bot.get_updates(allowed_updates=["callback_query"]) == []
    assert await bot.get_updates() == []  # the last list given still applies
    assert len(await bot.get_updates(allowed_updates=["message"])) == 1


async def test_webhook_delivery_with_secret_and_polling_conflict(served: tuple[BotAPIEmulator, str], bot: Bot) -> None:
    emulator, _ = served
    received: asyncio.Queue[tuple[str | None, dict[str, Any]]] = asyncio.Queue()

    async def webhook(request: web.Request) -> web.Response:
        await received.put((request.headers.get("X-Telegram-Bot-Api-Secret-Token"), await request.json()))
        return web.Response()

    app = web.Application()
    app.router.add_post("/hook", webhook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        assert await bot.set_webhook(f"http://127.0.0.1:{port}/hook", secret_token="s3cret")
        with pytest.raises(TelegramConflictError):
            await bot.get_updates()
        await emulator.user_sends(7, {"text": "by webhook"})
        secret, update = await asyncio.wait_for(received.get(), 10)
        assert secret == "s3cret"
        assert update["message"]["text"] == "by webhook"
        assert (await bot.get_webhook_info()).url.endswith("/hook")
        assert await bot.delete_webhook()
        assert await bot.get_updates() == []
    finally:
        await runner.cleanup()


async def test_other_methods_the_bot_uses(served: tuple[BotAPIEmulator, str], bot: Bot) -> None:
    emulator, _ = served
    await emulator.user_sends(7, {"text": "hi"})
    assert await bot.set_my_commands([BotCommand(command="start", description="Start")])
    assert [c.command for c in await bot.get_my_commands()] == ["start"]
    assert await bot.send_chat_action(7, "typing")
    sent = await bot.send_message(7, "before")
    edited = await bot.edit_message_text("after", chat_id=7, message_id=sent.message_id)
    assert not isinstance(edited, bool)
    assert edited.text == "after"
    with pytest.raises(TelegramBadRequest, match="message is not modified"):
        await bot.edit_message_text("after", chat_id=7, message_id=sent.message_id)


async def test_faults_answer_429_with_retry_after_then_recover(served: tuple[BotAPIEmulator, str], bot: Bot) -> None:
    emulator, url = served
    await emulator.user_sends(7, {"text": "hi"})
    assert await raw(url, "/_emulator/faults", method="sendMessage", status=429, retry_after=3, count=1) == (
        200,
        {"ok": True},
    )
    with pytest.raises(TelegramRetryAfter) as error:
        await bot.send_message(7, "x")
    assert error.value.retry_after == 3
    assert (await bot.send_message(7, "x")).text == "x"


async def test_control_api_over_http(served: tuple[BotAPIEmulator, str], bot: Bot) -> None:
    _, url = served
    status, body = await raw(url, "/_emulator/users/9/send", messages=[{"text": "a"}, {"kind": "sticker"}])
    assert status == 200
    assert len(body["updates"]) == 2
    assert body["updates"][1]["message"]["sticker"]["type"] == "regular"
    await bot.send_message(9, "answer")
    async with ClientSession() as http, http.get(f"{url}/_emulator/chats/9?count=1&wait=5") as response:
        chat = await response.json()
    assert [m["text"] for m in chat["messages"]] == ["answer"]


# --- flood control: Telegram's 429s are for one chat; its limits; calls sent into a wait -------------------


async def call(served: tuple[BotAPIEmulator, str], method: str = "sendMessage", **params: Any) -> tuple[int, int]:
    """Call a Bot API method over HTTP: (status, retry_after or 0)."""
    emulator, url = served
    status, body = await raw(url, f"/bot{emulator.token}/{method}", **params)
    return status, body.get("parameters", {}).get("retry_after", 0)


async def send(served: tuple[BotAPIEmulator, str], chat: int) -> tuple[int, int]:
    """sendMessage to `chat`: (status, retry_after or 0)."""
    return await call(served, chat_id=chat, text="x")


async def until_429(served: tuple[BotAPIEmulator, str], method: str = "sendMessage", **params: Any) -> int:
    """Call until Chaos draws a 429 (it also draws 502s and stalls); its retry_after."""
    for _ in range(100):
        status, retry_after = await call(served, method, **params)
        if status == 429:
            return retry_after
    pytest.fail(f"no 429 for {method} in 100 calls")


async def status(served: tuple[BotAPIEmulator, str]) -> dict[str, Any]:
    """GET /_emulator/status's flood control part, as an out-of-process test reads it."""
    _, url = served
    async with ClientSession() as http, http.get(f"{url}/_emulator/status") as response:
        flood: dict[str, Any] = (await response.json())["flood"]
    return flood


@pytest.mark.parametrize(("scope", "other_chat"), [("chat", 200), ("bot", 429)])
async def test_a_random_429_holds_back_its_chat_or_with_scope_bot_every_chat(
    served: tuple[BotAPIEmulator, str], scope: str, other_chat: int
) -> None:
    emulator, _ = served
    await emulator.user_sends(7, {"text": "hi"})
    await emulator.user_sends(8, {"text": "hi"})
    emulator.chaos = Chaos(
        shares={"sendMessage": 1.0}, long_retry_after=2, stall_seconds=0, scope="chat" if scope == "chat" else "bot"
    )
    assert await until_429(served, chat_id=7, text="x") == 2
    emulator.chaos.shares = {}
    status, retry_after = await send(served, 7)
    assert status == 429
    assert 1 <= retry_after <= 2
    assert (await send(served, 8))[0] == other_chat
    assert (await call(served, "getUpdates"))[0] == 200  # never held back


async def test_a_429_for_a_callback_answer_is_the_whole_bots(served: tuple[BotAPIEmulator, str]) -> None:
    """answerCallbackQuery has no chat_id (the emulator keeps no callback queries): its 429 holds back every chat."""
    emulator, _ = served
    await emulator.user_sends(7, {"text": "hi"})
    emulator.chaos = Chaos(shares={"answerCallbackQuery": 1.0}, long_retry_after=2, stall_seconds=0)
    assert await until_429(served, "answerCallbackQuery", callback_query_id="1") == 2
    assert (await send(served, 7))[0] == 429
    assert (await status(served))["waits"].keys() == {"bot"}


async def test_sends_into_a_chats_wait_are_counted_for_that_chat_only(served: tuple[BotAPIEmulator, str]) -> None:
    emulator, _ = served
    await emulator.user_sends(7, {"text": "hi"})
    await emulator.user_sends(8, {"text": "hi"})
    emulator.chaos = Chaos(
        shares={"sendMessage": 1.0}, long_retry_after=2, stall_seconds=0, flood=FloodControl(grace=0.3)
    )
    await until_429(served, chat_id=7, text="x")
    emulator.chaos.shares = {}
    assert (await send(served, 7))[0] == 429  # within the grace: as if already on its way, not counted
    assert emulator.chaos.ignored_flood_waits == 0
    await asyncio.sleep(0.4)
    assert [await send(served, 7), await send(served, 8), await send(served, 7)] == [(429, 2), (200, 0), (429, 2)]
    assert emulator.chaos.flood.ignored_by_chat == {7: 2}
    assert emulator.chaos.ignored_flood_waits == 2
    flood = await status(served)
    assert flood["ignored_flood_waits"] == 2
    assert flood["ignored_by_chat"] == {"7": 2}
    assert flood["waits"].keys() == {"7"}
    assert flood["refused"]["429"] == 1


async def test_limits_are_off_unless_asked_for(served: tuple[BotAPIEmulator, str]) -> None:
    emulator, _ = served
    await emulator.user_sends(7, {"text": "hi"})
    assert [(await send(served, 7))[0] for _ in range(10)] == [200] * 10
    emulator.chaos = Chaos()
    assert [(await send(served, 7))[0] for _ in range(10)] == [200] * 10
    assert (await status(served))["limits"] is None


async def test_a_chat_may_send_a_burst_then_about_one_a_second(served: tuple[BotAPIEmulator, str], bot: Bot) -> None:
    emulator, _ = served
    await emulator.user_sends(7, {"text": "hi"})
    await emulator.user_sends(8, {"text": "hi"})
    emulator.chaos = Chaos(flood=FloodControl(limits=FloodLimits(per_chat_burst=2, per_chat_window=0.5)))
    assert [(await send(served, 7))[0] for _ in range(2)] == [200, 200]
    await asyncio.sleep(0.6)  # the window has passed: another burst is within the limit
    assert [(await send(served, 7))[0] for _ in range(2)] == [200, 200]
    with pytest.raises(TelegramRetryAfter) as over:
        await bot.send_message(7, "one too many")
    assert over.value.retry_after == 1  # the oldest send in the window leaves it in under a second
    assert (await bot.send_message(8, "another chat")).text == "another chat"
    assert emulator.chaos.flood.over_limit == {"chat": 1}
    await asyncio.sleep(over.value.retry_after)
    assert (await bot.send_message(7, "after the wait")).text == "after the wait"
    assert emulator.chaos.ignored_flood_waits == 0


async def test_a_group_may_send_so_many_a_minute(served: tuple[BotAPIEmulator, str]) -> None:
    emulator, _ = served
    emulator.add_group(-100)
    await emulator.user_sends(7, {"text": "hi"})
    emulator.chaos = Chaos(flood=FloodControl(limits=FloodLimits(per_chat_burst=10, per_group=3)))
    assert [(await send(served, -100))[0] for _ in range(3)] == [200] * 3
    assert await send(served, -100) == (429, 60)  # a minute after the first of the three
    assert [(await send(served, 7))[0] for _ in range(4)] == [200] * 4  # a private chat has no group limit
    assert emulator.chaos.flood.over_limit == {"group": 1}
    assert (await status(served))["waits"].keys() == {"-100"}


async def test_the_whole_bot_may_send_so_many_a_second(served: tuple[BotAPIEmulator, str]) -> None:
    emulator, _ = served
    for chat in range(1, 5):
        await emulator.user_sends(chat, {"text": "hi"})
    emulator.chaos = Chaos(flood=FloodControl(limits=FloodLimits(per_bot=3, per_bot_window=1.0)))
    assert [(await send(served, chat))[0] for chat in (1, 2, 3)] == [200] * 3
    assert await send(served, 4) == (429, 1)
    assert (await send(served, 1))[0] == 429  # the bot's wait holds back every chat
    assert (await call(served, "getUpdates"))[0] == 200
    assert emulator.chaos.flood.over_limit == {"bot": 1}
    await asyncio.sleep(1.05)
    assert [(await send(served, chat))[0] for chat in (4, 1, 2)] == [200] * 3


async def test_only_what_puts_something_into_a_chat_counts_toward_the_limits(
    served: tuple[BotAPIEmulator, str],
) -> None:
    emulator, _ = served
    await emulator.user_sends(7, {"text": "hi"})
    await call(
        served, chat_id=7, text="Pick", reply_markup={"inline_keyboard": [[{"text": "A", "callback_data": "a"}]]}
    )
    presses = [await emulator.user_presses(7, "A") for _ in range(3)]
    emulator.chaos = Chaos(flood=FloodControl(limits=FloodLimits(per_chat_burst=1, per_bot=1)))
    for press in presses:
        assert (await call(served, "sendChatAction", chat_id=7, action="typing"))[0] == 200
        query = press["callback_query"]["id"]
        assert (await call(served, "answerCallbackQuery", callback_query_id=query))[0] == 200
        assert (await call(served, "getUpdates"))[0] == 200
    assert (await send(served, 7))[0] == 200
    assert (await call(served, "editMessageText", chat_id=7, message_id=2, text="y"))[0] == 429


async def test_limits_over_the_control_api(served: tuple[BotAPIEmulator, str]) -> None:
    emulator, url = served
    await emulator.user_sends(7, {"text": "hi"})
    await emulator.user_sends(8, {"text": "hi"})
    status_code, body = await raw(url, "/_emulator/flood_limits", per_chat_burst=1, per_chat_wndow=60)
    assert status_code == 400
    assert "per_chat_wndow" in body["description"]
    status_code, body = await raw(url, "/_emulator/flood_limits", per_chat_burst=1, per_chat_window=60)
    assert status_code == 200
    assert body["limits"]["per_chat_burst"] == 1
    assert body["limits"]["per_bot"] == 30  # left out: Telegram's number
    assert [await send(served, 7), await send(served, 7)] == [(200, 0), (429, 60)]
    flood = await status(served)
    assert flood["limits"]["per_chat_window"] == 60
    assert flood["over_limit"] == {"chat": 1}
    assert flood["waits"].keys() == {"7"}
    async with ClientSession() as http, http.delete(f"{url}/_emulator/flood_limits") as response:
        assert response.status == 200
    assert [(await send(served, 8))[0] for _ in range(3)] == [200] * 3
    assert (await status(served))["limits"] is None
