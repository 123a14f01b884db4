"""`python -m tools.check_replies [PATH ...]`: handlers that build a reply and drop it, or send it too early.

Handlers here return their reply (`return message.answer(...)`) and ApplyOnce
sends it once the handler's changes are saved. Two slips pass ruff and mypy:

- `message.answer("pong")` as a statement: the reply is built and dropped,
  nothing is sent;
- `return await message.answer(...)`: sent at once, before the changes are
  saved, and never sent again after a crash.

Each is reported as `path:line: what to write instead`; the exit code is 1 if
any was found. `make lint` runs it on handlers/.
"""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Iterator
from pathlib import Path

# Bot API shortcuts on messages, chats and callback queries, and the Bot's own methods.
SENDS = re.compile(r"^(answer|reply|send|edit|copy|forward|delete|pin|unpin)(_\w+)?$")


def problems(source: str, path: str) -> Iterator[str]:
    for node in ast.walk(ast.parse(source, path)):
        if isinstance(node, ast.Expr) and _sends(node.value):
            yield f"{path}:{node.lineno}: a reply built and dropped: return it (return message.answer(...))"
        elif isinstance(node, ast.Return) and isinstance(node.value, ast.Await) and _sends(node.value.value):
            yield (
                f"{path}:{node.lineno}: return await sends before the changes are saved: "
                "return the reply without await (return message.answer(...))"
            )


def _sends(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and bool(SENDS.match(node.func.attr))


def main(argv: list[str]) -> int:
    paths = [Path(arg) for arg in argv] or [Path("handlers")]
    files = sorted(file for path in paths for file in ([path] if path.is_file() else path.rglob("*.py")))
    found = [problem for file in files for problem in problems(file.read_text(encoding="utf-8"), str(file))]
    for problem in found:
        print(problem)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
