"""The terminal sandbox: `python main.py --sandbox`, stopped half-way and started again."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

from tests.support.bot_process import ROOT, finish


async def start_sandbox(folder: Path) -> asyncio.subprocess.Process:
    env = {k: v for k, v in os.environ.items() if k not in {"BOT_TOKEN", "STORAGE", "DATABASE_URL"}}
    return await asyncio.create_subprocess_exec(
        sys.executable,
        str(ROOT / "main.py"),
        "--sandbox",
        cwd=folder,
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def chat(folder: Path, *lines: str) -> str:
    """Type `lines`, then end the input (Ctrl-D); return what the terminal showed."""
    sandbox = await start_sandbox(folder)
    stdout, stderr = await finish(sandbox, 60, "".join(f"{line}\n" for line in lines).encode())
    assert sandbox.returncode == 0, stderr
    return stdout


async def read_until(stream: asyncio.StreamReader, text: str) -> str:
    seen = ""
    while text not in seen:
        chunk = await asyncio.wait_for(stream.read(4096), 60)
        assert chunk, f"the sandbox ended before showing {text!r}:\n{seen}"
        seen += chunk.decode()
    return seen


async def test_two_answers_then_end_of_input_then_finish_in_a_second_run(tmp_path: Path) -> None:
    first = await chat(tmp_path, "/start", "Ann")
    assert "What is your name?" in first
    assert "How old are you?" in first
    assert (tmp_path / "data" / "bot.db").exists()

    second = await chat(tmp_path, "30", ":photo", "4")
    assert "I can only read text here." in second
    assert "[4] Green" in second
    assert "Name: Ann" in second
    assert "Age: 30" in second
    assert "Favourite colour: Green" in second


async def test_ctrl_c_half_way_and_start_again(tmp_path: Path) -> None:
    sandbox = await start_sandbox(tmp_path)
    try:
        assert sandbox.stdin is not None
        assert sandbox.stdout is not None
        sandbox.stdin.write(b"/start\nBob\n")
        await sandbox.stdin.drain()
        await read_until(sandbox.stdout, "How old are you?")
        sandbox.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(sandbox.wait(), 30) == 0
    finally:
        if sandbox.returncode is None:
            sandbox.kill()
            await sandbox.wait()

    finished = await chat(tmp_path, "41", "Teal")
    assert "Name: Bob" in finished
    assert "Age: 41" in finished
    assert "Favourite colour: Teal" in finished
