"""The benchmark runs end to end on a tiny workload (it measures nothing at this size)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

from tests.support.bot_process import ROOT, finish


async def test_benchmark_runs_and_reports_every_storage(tmp_path: Path) -> None:
    report = tmp_path / "bench.json"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "benchmarks",
        "--quick",
        "--json",
        str(report),
        cwd=ROOT,
        env={**os.environ, "REDIS_URL": os.environ.get("REDIS_URL", "redis://127.0.0.1:6379")},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await finish(process, 240)
    assert process.returncode == 0, stderr
    assert "Target: [" in stdout
    numbers = json.loads(report.read_text())
    names = {row["name"] for row in numbers["in_process"]}
    assert {
        "MemoryStorage (aiogram), the limit",
        "RedisStorage (aiogram), local Redis",
        "SQLite file (ours), FSM and responses",
        "MongoDB (ours, PyMongo async), FSM and responses",
        "MongoDB (ours, motor), FSM and responses",
        "PyMongoStorage (aiogram), same server",
        "aiogram-sqlalchemy-storage, SQLite file",
    } <= names
    ours = [row for row in numbers["in_process"] if "(ours" in row["name"]]
    assert all(row["failed_users"] == 0 for row in ours), ours
    assert numbers["process"]["this bot"]["first_reply_seconds"] > 0
