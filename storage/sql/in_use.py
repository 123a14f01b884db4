"""Whether a bot is running on a SQLite file: a running bot holds a shared lock on it.

`migrate` must not copy a database a bot is still writing. SQLite's own locks
last only as long as a transaction, so a running bot also holds a shared
`flock` on the database file for its whole run (`held_while_running`);
`in_use` asks for an exclusive one without waiting. `flock` and SQLite's
byte-range locks are separate on Linux and macOS, so neither disturbs the
other. A server database (PostgreSQL, MySQL, MongoDB) cannot be asked this way.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no flock, so no answer
    fcntl = None  # type: ignore[assignment]


@contextmanager
def held_while_running(path: Path | None) -> Iterator[None]:
    """Hold a shared lock on the SQLite file at `path` while inside (nothing for None)."""
    if path is None or fcntl is None or not path.exists():
        yield
        return
    descriptor = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_SH)
        yield
    finally:
        os.close(descriptor)  # and with it the lock


def in_use(path: Path) -> bool:
    """True when a running bot holds the SQLite file at `path`."""
    if fcntl is None or not path.exists():
        return False
    descriptor = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(descriptor)
    return False
