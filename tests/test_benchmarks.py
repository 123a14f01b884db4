"""The benchmark runs end to end on a tiny workload (it measures nothing at this size)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest

from tests.support.bot_process import ROOT, finish


@pytest.mark.timeout(600)  # a bound on a hang, not a speed test: it runs every storage
async def test_benchmark_runs_and_reports_every_storage(tmp_path: Path) -> None:
    report = tmp_path / "bench.json"
    postgres = os.environ.get("POSTGRES_TEST_URL")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "benchmarks",
        "--quick",
        "--json",
        str(report),
        *(["--postgres-url", postgres] if postgres else []),
        cwd=ROOT,
        env={**os.environ, "REDIS_URL": os.environ.get("REDIS_URL", "redis://127.0.0.1:6379")},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await finish(process, 240)
    assert process.returncode == 0, stderr
    numbers = json.loads(report.read_text())
    # Each target the README and the issues set is checked and shown, met or not.
    shown = [line.strip() for line in stdout.splitlines() if line.strip().startswith(("[met]", "[MISSED]"))]
    assert len(shown) == len(numbers["targets"]) >= 3, stdout
    assert not postgres or any("of RedisStorage's updates/s" in line for line in shown), shown
    assert any("x PyMongoStorage" in line for line in shown), shown
    assert any("of the plain aiogram bot's updates/s" in line for line in shown), shown
    names = {row["name"] for row in numbers["in_process"]}
    assert {
        "MemoryStorage (aiogram), the limit",
        "RedisStorage (aiogram), local Redis",
        "RedisStorage + RedisEventIsolation (aiogram)",
        "SQLite file (ours), FSM and responses",
        "MongoDB (ours, PyMongo async), FSM and responses",
        "MongoDB (ours, motor), FSM and responses",
        "PyMongoStorage (aiogram), same server",
        "aiogram-sqlalchemy-storage, SQLite file",
        "plain aiogram bot, MemoryStorage (no ApplyOnce, outbox)",
    } <= names
    ours = [row for row in numbers["in_process"] if "(ours" in row["name"]]
    assert all(row["failed_users"] == 0 for row in ours), ours
    # Each update reads its key and commits once: at least two calls to the database, wherever it is.
    assert all(row["statements_per_update"] >= 2 for row in ours if "MemoryStorage" not in row["name"]), ours
    assert numbers["process"]["this bot"]["first_reply_seconds"] > 0


@pytest.mark.timeout(600)
async def test_the_scale_benchmark_runs_on_a_tiny_table(tmp_path: Path) -> None:
    report = tmp_path / "scale.json"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "benchmarks.scale", "--n", "200", "--only", "sqlite", "--json", str(report),
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await finish(process, 300)
    assert process.returncode == 0, stderr
    results = json.loads(report.read_text())["results"]["SQLite"]
    assert {"stats", "export csv", "export json", "export jsonl", "forget", "per update", "expiry"} <= set(results)
    assert results["expiry"]["removed"] >= 200  # every conversation was backlog (the per-update users too)
    assert "[met]" in stdout or "[MISSED]" in stdout
