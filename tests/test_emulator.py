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
from aiogram.types import BotCommand, KeyboardButton, ReplyKeyboardMarkup, ReplyKeyboardRemove
from aiohttp import ClientSession, web

from bot.emulator import BotAPIEmulator, running_emulator


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
