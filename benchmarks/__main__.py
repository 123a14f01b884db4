"""`python -m benchmarks`: the whole bot on each storage, then as a process. See docs/performance.md."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

from benchmarks.candidates import LIMIT, PLAIN, PYMONGO, REDIS, SQLITE, all_candidates, mongo_name, sql_server_name
from benchmarks.whole_bot import Throughput, processes, throughput

TARGET_LEVEL = 50  # users at once: where the README's target is set
FULL_LEVELS = [(100, 1), (300, TARGET_LEVEL), (600, 200)]
QUICK_LEVELS = [(3, 1), (8, TARGET_LEVEL)]
TARGET_SHARE = 0.6  # of the same bot on MemoryStorage
POSTGRES = sql_server_name("PostgreSQL")
MONGO = mongo_name("pymongo")
MONGO_TARGET = 1.2  # times aiogram's PyMongoStorage (issue 19)
POSTGRES_TARGET = 0.6  # of RedisStorage's updates/s (issue 19; issue 12 asked for 1.0)
# This bot on MemoryStorage against the plain aiogram bot (benchmarks/plain_bot.py): the machinery's cost.
# The outbox issue measured 0.57 (960 against 1,700 updates/s) before it, and asks for no lower after.
MACHINERY_TARGET = 0.57


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a tiny workload: checks that it runs, measures nothing")
    parser.add_argument("--json", type=Path, help="also write every number to this file")
    parser.add_argument("--mongo-url", default=os.environ.get("MONGO_TEST_URL"), help="else nx-27017 is started")
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL"), help="RedisStorage as a reference")
    parser.add_argument("--postgres-url", default=os.environ.get("POSTGRES_BENCH_URL"))
    parser.add_argument("--mysql-url", default=os.environ.get("MYSQL_BENCH_URL"))
    parser.add_argument("--rounds", type=int, default=3, help="report each storage's median round (default 3)")
    parser.add_argument("--no-process", action="store_true", help="skip starting the bot as a process")
    return parser.parse_args(argv)


def level_name(concurrency: int) -> str:
    return "1 user at a time" if concurrency == 1 else f"{concurrency} users at once"


def table(results: list[Throughput]) -> str:
    lines = []
    for concurrency in sorted({r.concurrency for r in results}):
        level = [r for r in results if r.concurrency == concurrency]
        limit = next((r.updates_per_second for r in level if r.name == LIMIT), 0.0)
        lines.append(f"\n{level_name(concurrency)} ({level[0].users} users, 4 updates each)")
        heading = f"{'updates/s':>10} {'vs limit':>9} {'p50 ms':>8} {'p99 ms':>8} {'calls/upd':>9} {'failed':>7}"
        lines.append(f"{'bot on':56} {heading}")
        for r in level:
            share = f"{r.updates_per_second / limit:.2f}" if limit else "-"
            speed, latency = f"{r.updates_per_second:10.0f} {share:>9}", f"{r.p50_ms:8.2f} {r.p99_ms:8.2f}"
            lines.append(f"{r.name:56} {speed} {latency} {r.statements_per_update:9.2f} {r.failed_users:7d}")
    return "\n".join(lines)


def targets(results: list[Throughput]) -> list[tuple[str, bool]]:
    """The targets the README and the issues set, each with whether this run met it."""
    by = {(r.name, r.concurrency): r.updates_per_second for r in results}
    checked = []
    limit, sqlite = by.get((LIMIT, TARGET_LEVEL)), by.get((SQLITE, TARGET_LEVEL))
    if limit and sqlite:
        share = sqlite / limit
        text = (
            f"SQLite, FSM and responses, {TARGET_LEVEL} users at once: {share:.2f} of MemoryStorage (>= {TARGET_SHARE})"
        )
        checked.append((text, share >= TARGET_SHARE))
    for (name, concurrency), speed in sorted(by.items()):
        if name == LIMIT and (PLAIN, concurrency) in by:
            share = speed / by[(PLAIN, concurrency)]
            text = (
                f"This bot on MemoryStorage, {level_name(concurrency)}: {share:.2f} of the plain aiogram bot's "
                f"updates/s (>= {MACHINERY_TARGET})"
            )
            checked.append((text, share >= MACHINERY_TARGET))
        if name == POSTGRES and (REDIS, concurrency) in by:
            share = speed / by[(REDIS, concurrency)]
            text = (
                f"PostgreSQL, {level_name(concurrency)}: {share:.2f} of RedisStorage's updates/s (>= {POSTGRES_TARGET})"
            )
            checked.append((text, share >= POSTGRES_TARGET))
        if name == MONGO and (PYMONGO, concurrency) in by:
            share = speed / by[(PYMONGO, concurrency)]
            text = f"MongoDB (PyMongo), {level_name(concurrency)}: {share:.2f}x PyMongoStorage (>= {MONGO_TARGET})"
            checked.append((text, share >= MONGO_TARGET))
    return checked


async def in_process(args: argparse.Namespace) -> list[Throughput]:
    from tests.support.mongo_server import WireProtocolServer

    with tempfile.TemporaryDirectory(prefix="bot-bench-") as name:
        folder = Path(name)
        server = None
        mongo_url = args.mongo_url
        if not mongo_url:
            server = WireProtocolServer(folder)
            server.start()
            mongo_url = server.url
        sql_urls = {name: url for name, url in (("PostgreSQL", args.postgres_url), ("MySQL", args.mysql_url)) if url}
        try:
            return await throughput(
                all_candidates(folder, args.redis_url, mongo_url, sql_urls),
                QUICK_LEVELS if args.quick else FULL_LEVELS,
                rounds=2 if args.quick else args.rounds,
                progress=lambda r: print(
                    f"  {r.name}, {level_name(r.concurrency)}: {r.updates_per_second:.0f} updates/s", file=sys.stderr
                ),
            )
        finally:
            if server is not None:
                server.stop()


def print_processes(report: dict[str, Any]) -> None:
    print("\nThe whole bot as a process, against the emulator")
    for name, numbers in report.items():
        print(
            f"  {name:22} first reply after {numbers['first_reply_seconds']:.2f} s, "
            f"RSS idle {numbers['idle_rss_mb']:.0f} MB, after the users {numbers['rss_after_users_mb']:.0f} MB"
        )
    ours, bare = report["this bot"], report["bare aiogram echo bot"]
    print(
        f"  difference: {ours['first_reply_seconds'] - bare['first_reply_seconds']:+.2f} s to the first reply, "
        f"{ours['idle_rss_mb'] - bare['idle_rss_mb']:+.0f} MB idle"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print("The whole bot in process (real Dispatcher and handlers, mocked Bot API), on each storage", file=sys.stderr)
    results = asyncio.run(in_process(args))
    print(table(results))
    checked = targets(results)
    if checked:
        print("\nTargets:")
    for text, met in checked:
        print(f"  [{'met' if met else 'MISSED'}] {text}")
    report: dict[str, Any] = {"in_process": [asdict(r) for r in results]}
    report["targets"] = [{"target": text, "met": met} for text, met in checked]
    if not args.no_process:
        report["process"] = asyncio.run(processes(quick=args.quick))
        print_processes(report["process"])
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    failed = sum(r.failed_users for r in results if "(ours)" in r.name)
    return 1 if failed and not args.quick else 0


if __name__ == "__main__":
    sys.exit(main())
