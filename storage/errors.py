"""What storages raise, whatever the database: handlers catch these, never a driver's own errors."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar

DEFAULT_TIMEOUT_SECONDS = 10.0


class StorageError(Exception):
    """Base of the storage errors."""


class StorageUnavailableError(StorageError):
    """The database did not answer (down, unreachable, too slow); retrying later may work."""


class SchemaError(StorageError):
    """A table or collection is not what the bot needs; the message says what to do. Raised at start-up."""


class CorruptDataError(StorageError):
    """A stored record is not what this bot writes (bad JSON, wrong types); resetting the key fixes it."""


class TimeBounded(Protocol):
    timeout: float | None


Self_ = TypeVar("Self_", bound=TimeBounded)
P = ParamSpec("P")
R = TypeVar("R")
Method = Callable[Concatenate[Self_, P], Coroutine[Any, Any, R]]


def database_call(
    unavailable: tuple[type[BaseException], ...],
) -> Callable[[Method[Self_, P, R]], Method[Self_, P, R]]:
    """Bound a storage method by `self.timeout` and turn the driver's outage errors into ours."""

    def decorate(method: Method[Self_, P, R]) -> Method[Self_, P, R]:
        @functools.wraps(method)
        async def bounded(self: Self_, /, *args: P.args, **kwargs: P.kwargs) -> R:
            try:
                async with asyncio.timeout(self.timeout):
                    return await method(self, *args, **kwargs)
            except TimeoutError as error:
                msg = f"{type(self).__name__}.{method.__name__} did not finish within {self.timeout} s"
                raise StorageUnavailableError(msg) from error
            except unavailable as error:
                msg = f"{type(self).__name__}.{method.__name__} failed: {type(error).__name__}: {error}"
                raise StorageUnavailableError(msg) from error

        return bounded

    return decorate
