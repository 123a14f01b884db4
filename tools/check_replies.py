"""`python -m tools.check_replies [PATH ...]`: Bot API calls that handlers build and drop, or send too early.

Handlers here return their Bot API calls (`return message.answer(...)`, or a
list: `return [callback.answer(), ask(...)]`) and ApplyOnce sends them once
the handler's changes are saved. Three slips pass ruff and mypy:

- a call built and dropped: `message.answer("pong")`, `ask(message, question)`
  or `await come_back(...)` as a statement: nothing is sent;
- a call sent by the handler itself: `await message.answer(...)`, as a
  statement, assigned or returned (`return await message.answer(...)`): it
  goes out at once, before the changes are saved, and is never sent again
  after a crash;
- the same with a method object: `SendMessage(...)` alone, `await SendMessage(...)`.

What builds a call: an aiogram shortcut or Bot method (`answer`, `reply`,
`edit_text`, `send_message`...), a method class of `aiogram.methods`, and
every function of the checked files (handlers/) whose return annotation
names a method class or `TelegramMethod` (`ask`, `ask_in`, `come_back`...),
or that returns such a call. Reads (`await bot.get_chat(...)`) may be
awaited. A call meant to go out at once (a chat action) is let through with
`# check_replies: sends now` at the end of its line.

Each is reported as `path:line: function: what to write instead`; the exit
code is 1 if any was found. `make lint` runs it on handlers/, first.
"""

from __future__ import annotations

import ast
import inspect
import re
import sys
from collections.abc import Iterable, Iterator
from functools import cache
from pathlib import Path

import aiogram.methods
import aiogram.types
from aiogram import Bot
from aiogram.methods import TelegramMethod

HANDLERS = Path(__file__).resolve().parent.parent / "handlers"
# Bot API shortcuts on messages, chats and callback queries, and the Bot's own methods, by their look:
# one alone as a statement is a call dropped.
SENDS = re.compile(r"^(answer|reply|send|edit|copy|forward|delete|pin|unpin)(_\w+)?$")
# Awaited, these only read (nothing is sent or changed): a handler may await them.
READS = re.compile(r"^(get_\w+|download\w*|me|close|log_out)$|^Get[A-Z]\w*$")
SENT_ON_PURPOSE = "# check_replies: sends now"

DROPPED = "a reply built and dropped, never sent: return it (return {call}; several, in order: return [..., {call}])"
SENT_NOW = (
    "await {call} sends at once, before the changes are saved, and never again after a crash: "
    "return it instead (return {call}; several, in order: return [{call}, ...]; the handler's return type then"
    " names them: -> SendMessage, or -> list[TelegramMethod[Any]])"
)
RETURN_AWAIT = (
    "return await sends before the changes are saved, and never again after a crash: "
    "return the reply without await (return {call})"
)


@cache
def method_classes() -> frozenset[str]:
    """`SendMessage`, `AnswerCallbackQuery`...: aiogram's Bot API method classes."""
    return frozenset(
        name
        for name, value in vars(aiogram.methods).items()
        if isinstance(value, type) and issubclass(value, TelegramMethod)
    )


@cache
def shortcuts() -> frozenset[str]:
    """The Bot's API methods (`send_message`) and the types' shortcuts that build one (`answer`, `edit_text`)."""
    names = {name for name, value in vars(Bot).items() if inspect.iscoroutinefunction(value) and name[0] != "_"}
    classes = method_classes()
    for value in vars(aiogram.types).values():
        if isinstance(value, type):
            for name, member in vars(value).items():
                returns = getattr(member, "__annotations__", {}).get("return") if callable(member) else None
                if getattr(returns, "__name__", returns) in classes and name[0] != "_":
                    names.add(name)
    return frozenset(names)


def builders(sources: Iterable[tuple[str, str]]) -> frozenset[str]:
    """The names of the functions in `sources` ((source, path) pairs) that build and return Bot API calls."""
    trees = [ast.parse(source, path) for source, path in sources]
    functions = [
        (node, _modules(tree))
        for tree in trees
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    ]
    found = {function.name for function, _ in functions if _names_a_method(function.returns)}
    while True:  # a function returning what a builder builds builds too
        more = {
            function.name
            for function, modules in functions
            if function.name not in found
            and any(_builds(node.value, found, modules) for node in _own_returns(function))
        }
        if not more:
            return frozenset(found)
        found |= more


def _own_returns(function: ast.FunctionDef | ast.AsyncFunctionDef) -> Iterator[ast.Return]:
    """The function's own `return`s, not those of functions defined inside it (`follow`'s handlers)."""
    pending: list[ast.AST] = list(function.body)
    while pending:
        node = pending.pop()
        if isinstance(node, ast.Return):
            yield node
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            pending.extend(ast.iter_child_nodes(node))


@cache
def project_builders() -> frozenset[str]:
    return builders((file.read_text(encoding="utf-8"), str(file)) for file in sorted(HANDLERS.rglob("*.py")))


def problems(source: str, path: str, known: frozenset[str] | None = None) -> Iterator[str]:
    """`path:line: function: problem` for each call built and dropped or sent by the handler itself.

    `known`: the builders of the other checked files (by default the project's handlers/).
    """
    known = (project_builders() if known is None else known) | builders([(source, path)])
    lines = source.splitlines()
    tree = ast.parse(source, path)
    modules = _modules(tree)
    returned = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Return)}
    for function, node in _nodes(tree):
        line = lines[node.lineno - 1] if node.lineno <= len(lines) else ""
        if SENT_ON_PURPOSE in line:
            continue
        where = f"{path}:{node.lineno}: {function}: "
        if isinstance(node, ast.Expr) and _dropped(node.value, known, modules):
            yield where + DROPPED.format(call=_shown(node.value))
        elif isinstance(node, ast.Return) and isinstance(node.value, ast.Await) and _sent(node.value):
            yield where + RETURN_AWAIT.format(call=_shown(node.value.value))
        elif isinstance(node, ast.Await) and _sent(node) and id(node) not in returned:
            yield where + SENT_NOW.format(call=_shown(node.value))


def _nodes(tree: ast.AST) -> Iterator[tuple[str, ast.stmt | ast.expr]]:
    """Every statement and expression, with the name of the function it is in (`<module>` outside any)."""

    def visit(node: ast.AST, function: str) -> Iterator[tuple[str, ast.stmt | ast.expr]]:
        for child in ast.iter_child_nodes(node):
            inner = child.name if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef) else function
            if isinstance(child, ast.stmt | ast.expr):
                yield inner, child
            yield from visit(child, inner)

    return visit(tree, "<module>")


def _names_a_method(annotation: ast.expr | None) -> bool:
    if annotation is None:
        return False
    if isinstance(annotation, ast.Constant) and isinstance(annotation.value, str):  # a quoted annotation
        try:
            annotation = ast.parse(annotation.value, mode="eval").body
        except SyntaxError:
            return False
    classes = method_classes() | {"TelegramMethod"}
    return any(
        (isinstance(node, ast.Name) and node.id in classes)
        or (isinstance(node, ast.Attribute) and node.attr in classes)
        for node in ast.walk(annotation)
    )


def _called(node: ast.expr | None) -> str | None:
    """The name called by `node` (`answer` for `message.answer(...)`, `ask` for `forms.ask(...)`), if a call."""
    if not isinstance(node, ast.Call):
        return None
    if isinstance(node.func, ast.Attribute):
        return node.func.attr
    if isinstance(node.func, ast.Name):
        return node.func.id
    return None


def _modules(tree: ast.AST) -> frozenset[str]:
    """The names a file binds to modules: `forms` for `from handlers import forms`, `handlers` for `import handlers`."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.asname or alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == HANDLERS.name:
            names |= {alias.asname or alias.name for alias in node.names}
    return frozenset(names)


def _calls_builder(node: ast.expr, known: frozenset[str] | set[str], modules: frozenset[str]) -> bool:
    """`ask(...)`, `forms.ask(...)`: a call of a builder of handlers/ (by its name; a method of that name is not)."""
    if not isinstance(node, ast.Call):
        return False
    if isinstance(node.func, ast.Name):
        return node.func.id in known
    root = node.func
    while isinstance(root, ast.Attribute):
        root = root.value
    return isinstance(node.func, ast.Attribute) and node.func.attr in known and ast.unparse(root) in modules


def _builds(node: ast.expr | None, known: frozenset[str] | set[str], modules: frozenset[str]) -> bool:
    """Whether `node` evaluates to a Bot API call (or a list of them) without sending it."""
    if isinstance(node, ast.List | ast.Tuple):
        return any(_builds(item, known, modules) for item in node.elts)
    if isinstance(node, ast.Await):  # awaiting a builder of the project's (async come_back) gives the call
        return _calls_builder(node.value, known, modules) and not _sent(node)
    return node is not None and (_calls_builder(node, known, modules) or _is_api_call(node))


def _dropped(node: ast.expr, known: frozenset[str], modules: frozenset[str]) -> bool:
    """A statement of its own that builds a call (anything that looks like a shortcut counts) and drops it."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and SENDS.match(node.func.attr):
        return True
    return _builds(node, known, modules)


def _is_api_call(node: ast.expr) -> bool:
    """`message.answer(...)`, `bot.send_message(...)`, `SendMessage(...)`: aiogram's own builders."""
    name = _called(node)
    if name is None or not isinstance(node, ast.Call):
        return False
    if isinstance(node.func, ast.Attribute):
        return name in shortcuts() or name in method_classes()
    return name in method_classes()


def _sent(node: ast.expr) -> bool:
    """`await message.answer(...)`: aiogram's call, awaited, is sent at once (a read is let through)."""
    if not isinstance(node, ast.Await) or not _is_api_call(node.value):
        return False
    name = _called(node.value)
    return name is not None and not READS.match(name)


def _shown(node: ast.expr) -> str:
    """The call as the hint shows it: `message.answer(...)`, `await come_back(...)`."""
    if isinstance(node, ast.Await):
        return f"await {_shown(node.value)}"
    if isinstance(node, ast.Call):
        return f"{ast.unparse(node.func)}(...)"
    return ast.unparse(node)


def main(argv: list[str]) -> int:
    paths = [Path(arg) for arg in argv] or [HANDLERS]
    files = sorted(file for path in paths for file in ([path] if path.is_file() else path.rglob("*.py")))
    sources = [(file.read_text(encoding="utf-8"), str(file)) for file in files]
    known = builders(sources) | project_builders()
    found = [problem for source, path in sources for problem in problems(source, path, known)]
    for problem in found:
        print(problem)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
