"""README's recipes, as the tests run them: a python block taken from README.md by its first line."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest

import handlers
from handlers import fallback

ROOT = Path(__file__).resolve().parents[2]


def readme_block(file: str) -> str:
    """The python block of README.md that starts with `# <file>` (a recipe's file, as a copier writes it)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    [code] = re.findall(rf"```python\n(# {re.escape(file)}\n.*?)```", readme, flags=re.DOTALL)
    return str(code)


def install_recipe(monkeypatch: pytest.MonkeyPatch, file: str) -> types.ModuleType:
    """README's `handlers/<name>.py`, imported as that module and listed where README says (in
    `handlers.modules()`, before `fallback`): its router and its `COMMANDS` join the bot's."""
    name = file.removesuffix(".py").replace("/", ".")
    module = types.ModuleType(name)
    monkeypatch.setitem(sys.modules, name, module)
    exec(compile(readme_block(file), f"README.md: {file}", "exec"), module.__dict__)
    listed = handlers.modules()
    listed.insert(listed.index(fallback), module)
    monkeypatch.setattr(handlers, "modules", lambda: listed)
    return module
