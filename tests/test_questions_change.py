"""The tests follow the questions: a copier who reorders, removes or adds one sees them pass, none edited.

For each variant, the project is copied (without .venv and .git) into a temporary folder,
its states/questionnaire.py rewritten as a copier would edit it, and the test files that
go through the questions run there in a subprocess (`python -m pytest`). They run on SQLite
only (TEST_SQLITE_ONLY=1, tests/support/backends.py): the other backends run the same
handlers. The three runs go at once (they mostly wait on bot processes): about 4 minutes.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
QUESTIONNAIRE = Path("states") / "questionnaire.py"
# The files that go through the questions, cheap enough to run three times more.
FILES = [
    "tests/test_flow.py",
    "tests/test_failures.py",
    "tests/test_admin.py",
    "tests/test_template.py",
    "tests/test_metrics.py",
    "tests/test_logs.py",
]
# A question as a copier adds one: free text, counted in stats.
ADDED = """    city = Question(
        "Which city do you live in?",
        read=short_text("city"),
        label="City",
        sample="Lisbon",
        tally=Tally.COUNTS,
    )
"""

Blocks = list[str]


def split(source: str) -> tuple[str, Blocks]:
    """The definition up to its first question, and each question's lines (`    key = Question(` to its `    )`)."""
    blocks = re.findall(r"^    \w+ = Question\(\n.*?^    \)\n", source, flags=re.DOTALL | re.MULTILINE)
    assert len(blocks) >= 3, "the variants need three questions or more (the tests need two, one removed)"
    head = source[: source.index(blocks[0])]
    assert source == head + "".join(blocks), "the questions should end the file, one after the other"
    return head, blocks


def free_text(block: str) -> bool:
    return "choices=" not in block and "whole_number" not in block


def one_removed(blocks: Blocks) -> Blocks:
    """The first question gone, unless it is the only free-text one or the only one with choices
    (the tests need one of each): then the first that is neither."""
    for block in blocks:
        rest = [other for other in blocks if other is not block]
        if any(map(free_text, rest)) and any("choices=" in other for other in rest):
            return rest
    return blocks[1:]


VARIANTS: dict[str, Callable[[Blocks], Blocks]] = {
    "permuted": lambda blocks: [*blocks[1:], blocks[0]],  # the first question last
    "one-removed": one_removed,
    "one-added": lambda blocks: [*blocks, ADDED],
}


def copy_of_the_project(target: Path) -> Path:
    """The project without what is yours alone (`.env`, the SQLite database in `data/`) or rebuilt."""
    ignored = shutil.ignore_patterns(
        ".venv", ".git", "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache", ".env", "data", "*.db*"
    )
    shutil.copytree(ROOT, target, ignore=ignored)
    return target


@pytest.mark.timeout(900)
def test_the_tests_pass_after_the_questions_change(tmp_path: Path) -> None:
    """The three variants at once: their runs mostly wait on bot processes, so together they take about one's time."""
    head, blocks = split((ROOT / QUESTIONNAIRE).read_text(encoding="utf-8"))
    env = {**os.environ, "TEST_SQLITE_ONLY": "1", "POSTGRES_TEST_URL": "", "MYSQL_TEST_URL": ""}
    env.pop("PYTEST_XDIST_WORKER", None)
    env.pop("PYTEST_XDIST_TESTRUNUID", None)
    definitions, runs = {}, {}
    try:
        for variant, change in VARIANTS.items():
            project = copy_of_the_project(tmp_path / variant)
            definitions[variant] = head + "".join(change(blocks))
            assert definitions[variant] != head + "".join(blocks)
            (project / QUESTIONNAIRE).write_text(definitions[variant], encoding="utf-8")
            runs[variant] = subprocess.Popen(
                [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist", *FILES],
                cwd=project,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        outputs = {variant: run.communicate(timeout=840)[0] for variant, run in runs.items()}
    finally:
        for run in runs.values():
            if run.poll() is None:
                run.kill()
                run.wait()
    failed = [
        f"--- {variant}:\n{definitions[variant]}\n{outputs[variant][-6000:]}"
        for variant, run in runs.items()
        if run.returncode != 0
    ]
    assert not failed, "\n".join(failed)
