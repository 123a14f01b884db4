"""Checks on this project's handler idiom, so a slip is reported instead of silent.

- `check_dependencies`: when the Dispatcher is built, every handler's
  arguments must be something aiogram, the Dispatcher's workflow data or the
  handler's own filters hand it. A name no one provides (a store never passed
  to `Dispatcher(...)`) stops the bot at start-up, naming the handler, instead
  of failing a user's message later.
- `ReplyGuard`: handlers return their reply (`return message.answer(...)`),
  which `ApplyOnce` sends once the handler's changes are saved. A handler
  that returns a `Message` it already sent (`return await message.answer(...)`),
  or sends a message itself while it changes the state, is logged as a
  warning naming the handler: such a reply goes out before the answer is
  saved, and is not sent again after a crash. The tests fail on that warning.
- `tools/check_replies.py` (run by `make lint`) finds a reply built and dropped.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any

from aiogram import BaseMiddleware, Bot, Dispatcher
from aiogram.client.session.middlewares.base import BaseRequestMiddleware, NextRequestMiddlewareType
from aiogram.dispatcher.event.handler import CallableObject, HandlerObject
from aiogram.filters import Command, StateFilter
from aiogram.filters.exception import ExceptionMessageFilter, ExceptionTypeFilter
from aiogram.fsm.context import FSMContext
from aiogram.fsm.state import State, StatesGroup
from aiogram.methods import GetUpdates, Response, TelegramMethod
from aiogram.methods.base import TelegramType
from aiogram.types import Message, TelegramObject
from aiogram.utils.magic_filter import AsFilterResultOperation

logger = logging.getLogger(__name__)

# What aiogram (and ApplyOnce, in place of its FSM middleware) hands every handler.
AIOGRAM_PROVIDES = frozenset(
    {
        "bot",
        "bots",
        "dispatcher",
        "event_update",
        "event_router",
        "handler",
        "event_context",
        "event_from_user",
        "event_chat",
        "event_thread_id",
        "event_business_connection_id",
        "state",
        "raw_state",
        "fsm_storage",
    }
)
# Filters that hand the handler nothing (a State or StatesGroup filters on the state).
KNOWN_FILTERS = (State, StatesGroup, StateFilter, ExceptionTypeFilter, ExceptionMessageFilter)


class MissingDependencyError(RuntimeError):
    """A handler asks for an argument nothing provides."""


def name_of(callable_object: CallableObject) -> str:
    callback = callable_object.callback
    return f"{getattr(callback, '__module__', '?')}.{getattr(callback, '__qualname__', repr(callback))}"


def check_dependencies(dispatcher: Dispatcher) -> None:
    """Every handler of every router gets each argument it has no default for; else MissingDependencyError."""
    provided = AIOGRAM_PROVIDES | set(dispatcher.workflow_data)
    problems = []
    for router in dispatcher.chain_tail:
        for observer in router.observers.values():
            for handler in observer.handlers:
                missing = _missing(handler, provided)
                if missing:
                    problems.append(f"{name_of(handler)} needs {', '.join(sorted(missing))}")
    if problems:
        msg = (
            f"nothing provides what these handlers ask for: {'; '.join(problems)}. Pass it to "
            "Dispatcher(...) in bot/setup.py (workflow data), or give the argument a default"
        )
        raise MissingDependencyError(msg)


def _missing(handler: HandlerObject, provided: set[str] | frozenset[str]) -> set[str]:
    if not inspect.isfunction(handler.callback) and not inspect.ismethod(handler.callback):
        return set()  # a class-based handler takes everything as **kwargs
    given = set(provided)
    for filter_object in handler.filters or []:
        if filter_object.magic is not None:
            operations = getattr(filter_object.magic, "_operations", ())
            given |= {operation.name for operation in operations if isinstance(operation, AsFilterResultOperation)}
        elif isinstance(filter_object.callback, Command):
            given.add("command")
        elif not isinstance(filter_object.callback, KNOWN_FILTERS):
            return set()  # a filter of the bot's own may hand the handler anything: cannot tell
    parameters = list(inspect.signature(handler.callback).parameters.values())[1:]  # the event comes first
    return {
        parameter.name
        for parameter in parameters
        if parameter.default is inspect.Parameter.empty
        and parameter.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        and parameter.name not in given
    }


# The Bot API calls made while a handler runs (None outside of one).
_sent_by_handler: ContextVar[list[str] | None] = ContextVar("sent_by_handler", default=None)


class CountSends(BaseRequestMiddleware):
    """A Bot session middleware: notes each call a handler makes itself, for `ReplyGuard`."""

    async def __call__(
        self, make_request: NextRequestMiddlewareType[TelegramType], bot: Bot, method: TelegramMethod[TelegramType]
    ) -> Response[TelegramType]:
        sent = _sent_by_handler.get()
        if sent is not None and not isinstance(method, GetUpdates):
            sent.append(type(method).__name__)
        return await make_request(bot, method)


class ReplyGuard(BaseMiddleware):
    """Around each handler: warns when its reply would go out before its changes are saved."""

    async def __call__(
        self,
        handler: Callable[[TelegramObject, dict[str, Any]], Awaitable[Any]],
        event: TelegramObject,
        data: dict[str, Any],
    ) -> Any:
        state = data.get("state")
        before = await _snapshot(state)
        sent: list[str] = []
        token = _sent_by_handler.set(sent)
        try:
            result = await handler(event, data)
        finally:
            _sent_by_handler.reset(token)
        name = name_of(data["handler"]) if "handler" in data else "a handler"
        if isinstance(result, Message):
            logger.warning(
                "%s returned a Message it had already sent (return await ...): it went out before the "
                "changes were saved and is not sent again after a crash; return message.answer(...) without await",
                name,
            )
        elif sent and before is not None and await _snapshot(state) != before:
            logger.warning(
                "%s sent %s itself while changing the state: it went out before the change was saved; "
                "return the reply instead (return message.answer(...))",
                name,
                ", ".join(sent),
            )
        return result


async def _snapshot(state: Any) -> tuple[str | None, dict[str, Any]] | None:
    if not isinstance(state, FSMContext):
        return None
    try:
        return await state.get_state(), await state.get_data()
    except Exception:
        return None
