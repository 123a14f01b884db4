"""Checks on this project's handler idiom, so a slip is reported instead of silent.

- `check_dependencies`: when the Dispatcher is built, every handler's
  arguments must be something aiogram, the Dispatcher's workflow data, the
  handler's own filters or a middleware on its way (by its `provides`
  attribute) hand it. A name no one provides (a store never passed to
  `Dispatcher(...)`) stops the bot at start-up, naming the handler, instead
  of failing a user's message later; a handler behind a filter of its own
  that declares nothing is logged as a warning naming it. A router using
  aiogram's Scenes stops the start-up too: a scene's enter/leave handlers
  cannot return their calls to the commit.
- `ReplyGuard`: handlers return their reply (`return message.answer(...)`),
  which `ApplyOnce` sends once the handler's changes are saved. A handler
  that returns a `Message` it already sent (`return await message.answer(...)`),
  or sends a message itself while it changes the state, is logged as a
  warning naming the handler: such a reply goes out before the answer is
  saved, and is not sent again after a crash. The tests fail on that warning.
- `tools/check_replies.py` (run first by `make lint`) finds a call built and
  dropped, and a call a handler sends itself (`await message.answer(...)`).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any

from aiogram import BaseMiddleware, Bot, Dispatcher, Router
from aiogram.client.session.middlewares.base import BaseRequestMiddleware, NextRequestMiddlewareType
from aiogram.dispatcher.event.handler import CallableObject, FilterObject, HandlerObject
from aiogram.filters import ChatMemberUpdatedFilter, Command, MagicData, StateFilter
from aiogram.filters.callback_data import CallbackQueryFilter
from aiogram.filters.exception import ExceptionMessageFilter, ExceptionTypeFilter
from aiogram.filters.logic import _AndFilter, _InvertFilter, _OrFilter
from aiogram.fsm.context import FSMContext
from aiogram.fsm.scene import SceneHandlerWrapper, SceneRegistry
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
KNOWN_FILTERS = (
    State,
    StatesGroup,
    StateFilter,
    ExceptionTypeFilter,
    ExceptionMessageFilter,
    ChatMemberUpdatedFilter,
    MagicData,
    _InvertFilter,
)
SCENES_NOT_SUPPORTED = (
    "aiogram Scenes are not supported by this bot: {found}. Each update is applied in one commit with the "
    "Bot API calls its handler returns (bot/apply_once.py), but a scene's enter/leave/exit handlers cannot "
    "return theirs (aiogram drops what they return): their messages would go out before the state is saved, "
    "and never again after a crash. Write the steps as a StatesGroup of Questions (README: a second form)"
)


class HandlerCheckError(RuntimeError):
    """The handlers, as registered, cannot run right with this bot: start-up stops, naming the handler."""


class MissingDependencyError(HandlerCheckError):
    """A handler asks for an argument nothing provides."""


class ScenesNotSupportedError(HandlerCheckError):
    """A router uses aiogram's Scenes (aiogram.fsm.scene), which cannot return their calls to the commit."""


def name_of(callable_object: CallableObject) -> str:
    callback = callable_object.callback
    return f"{getattr(callback, '__module__', '?')}.{getattr(callback, '__qualname__', repr(callback))}"


def check_dependencies(dispatcher: Dispatcher) -> None:
    """Every handler of every router gets each argument it has no default for; else MissingDependencyError.

    What is provided: aiogram's own data, the Dispatcher's workflow data, what the handler's filters
    hand it, and the names a middleware on its way declares in a `provides` attribute (a filter of the
    bot's own may declare `provides` too). A handler whose filter or signature cannot be judged is
    logged as a warning naming it. A router using aiogram's Scenes raises ScenesNotSupportedError.
    """
    scenes = _scenes(dispatcher)
    if scenes:
        raise ScenesNotSupportedError(SCENES_NOT_SUPPORTED.format(found="; ".join(scenes)))
    problems = []
    for router in dispatcher.chain_tail:
        for event_name, observer in router.observers.items():
            provided = AIOGRAM_PROVIDES | set(dispatcher.workflow_data) | _provided_on_the_way(router, event_name)
            for handler in observer.handlers:
                missing, unjudged = _missing(handler, provided, _root_filters(router, event_name))
                if missing and unjudged:
                    logger.warning(
                        "%s asks for %s, which nothing known provides, and its filter %s may hand it: not checked; "
                        "give the filter a `provides` attribute naming what it hands, to have it checked",
                        name_of(handler),
                        ", ".join(sorted(missing)),
                        unjudged,
                    )
                elif missing:
                    problems.append(f"{name_of(handler)} needs {', '.join(sorted(missing))}")
    if problems:
        msg = (
            f"nothing provides what these handlers ask for: {'; '.join(problems)}. Pass it to "
            "Dispatcher(...) in bot/setup.py (workflow data), name it in the `provides` of the middleware "
            "that sets it, or give the argument a default"
        )
        raise MissingDependencyError(msg)


def _declared(owner: object) -> set[str]:
    """The names `owner` (a middleware or a filter, or the object a bound method of it belongs to) provides."""
    provides = getattr(owner, "provides", None)
    if provides is None:
        provides = getattr(getattr(owner, "__self__", None), "provides", None)
    if isinstance(provides, str):
        return {provides}
    return {name for name in provides or () if isinstance(name, str)}


def _provided_on_the_way(router: Router, event_name: str) -> set[str]:
    """What the middlewares an event of `event_name` passes on its way to `router`'s handlers declare."""
    names: set[str] = set()
    for on_the_way in router.chain_head:  # the router and its parents, up to the Dispatcher
        for observer in (on_the_way.observers.get(event_name), on_the_way.observers.get("update")):
            if observer is not None:
                for middleware in [*observer.outer_middleware, *observer.middleware]:
                    names |= _declared(middleware)
    return names


def _root_filters(router: Router, event_name: str) -> list[FilterObject]:
    """The filters set on `router`'s observer and its parents' (`router.message.filter(...)`)."""
    filters: list[FilterObject] = []
    for on_the_way in router.chain_head:
        observer = on_the_way.observers.get(event_name)
        root = getattr(observer, "_handler", None)
        filters.extend(getattr(root, "filters", None) or [])
    return filters


def _scenes(dispatcher: Dispatcher) -> list[str]:
    """Where the routers use aiogram's Scenes: a SceneRegistry's middleware, a scene's handlers, `scenes` asked."""
    found: dict[str, None] = {}
    for router in dispatcher.chain_tail:
        for observer in router.observers.values():
            for middleware in [*observer.outer_middleware, *observer.middleware]:
                if isinstance(getattr(middleware, "__self__", None), SceneRegistry):
                    found[f"a SceneRegistry on router {router.name!r}"] = None
            for handler in observer.handlers:
                if isinstance(handler.callback, SceneHandlerWrapper):
                    scene = handler.callback.scene
                    found[f"scene {scene.__module__}.{scene.__qualname__}"] = None
                elif "scenes" in handler.params:
                    entered = _scene_entered_by(handler.callback)
                    entry = f"{entered.__qualname__}.as_handler()" if entered is not None else name_of(handler)
                    found[f"{entry} (router {router.name!r}) takes scenes"] = None
    return list(found)


def _scene_entered_by(callback: object) -> type | None:
    """The scene a `Scene.as_handler()` handler enters (None for any other handler)."""
    if not inspect.isfunction(callback):
        return None
    entered = inspect.getclosurevars(callback).nonlocals.get("cls")
    return entered if isinstance(entered, type) else None


def _gives(filter_object: FilterObject) -> set[str] | None:
    """What a filter hands the handler; None if that cannot be told."""
    target = filter_object.callback
    if filter_object.magic is not None:
        operations = getattr(filter_object.magic, "_operations", ())
        return {operation.name for operation in operations if isinstance(operation, AsFilterResultOperation)}
    declared = _declared(target)
    if declared:
        return declared
    if isinstance(target, Command):
        return {"command"}
    if isinstance(target, CallbackQueryFilter):  # CallbackData.filter()
        return {"callback_data"}
    if isinstance(target, _AndFilter | _OrFilter):
        given: set[str] = set()
        for inner in target.targets:
            names = _gives(inner)
            if names is None:
                return None
            given |= names
        return given
    if isinstance(target, KNOWN_FILTERS):
        return set()
    return None


def _missing(
    handler: HandlerObject, provided: set[str] | frozenset[str], root_filters: list[FilterObject]
) -> tuple[set[str], str | None]:
    """The arguments without a default nothing provides, and a filter that may provide them (None if none may)."""
    callback = handler.callback
    if inspect.isclass(callback):
        return set(), None  # a class-based handler takes everything as **kwargs
    given = set(provided)
    unjudged = None
    for filter_object in [*root_filters, *(handler.filters or [])]:
        names = _gives(filter_object)
        if names is None:
            unjudged = unjudged or repr(filter_object.callback)
        else:
            given |= names
    try:
        parameters = list(inspect.signature(callback).parameters.values())[1:]  # the event comes first
    except (TypeError, ValueError):  # aiogram hands such a callback nothing either
        return set(), None
    missing = {
        parameter.name
        for parameter in parameters
        if parameter.default is inspect.Parameter.empty
        and parameter.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        and parameter.name not in given
    }
    return missing, unjudged


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
