"""`python -m benchmarks`: the FSM storages side by side, then the whole bot. See README, Performance."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from benchmarks.storages import Result, run_all, temporary_folder

FULL_LEVELS = [(100, 1), (200, 50), (400, 200)]
QUICK_LEVELS = [(3, 1), (6, 3), (8, 4)]
PACKAGE = "aiogram-sqlalchemy-storage, SQLite file"
REDIS = "aiogram RedisStorage, local Redis"
PYMONGO = "aiogram PyMongoStorage"
OURS_SQLITE = "SQLAlchemyStorage (ours), SQLite file"
OURS_MONGO = ("MongoStorage (ours), PyMongo async", "MongoStorage (ours), motor")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a tiny workload: checks that it runs, measures nothing")
    parser.add_argument("--json", type=Path, help="also write every number to this file")
    parser.add_argument("--mongo-url", default=os.environ.get("MONGO_TEST_URL"), help="else nx-27017 is started")
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL"), help="RedisStorage as a reference")
    parser.add_argument("--postgres-url", default=os.environ.get("POSTGRES_BENCH_URL"))
    parser.add_argument("--mysql-url", default=os.environ.get("MYSQL_BENCH_URL"))
    parser.add_argument("--rounds", type=int, default=3, help="report each storage's median round (default 3)")
    parser.add_argument("--no-bot", action="store_true", help="skip the whole-bot benchmark")
    return parser.parse_args(argv)


def level_name(result: Result) -> str:
    return "1 user at a time" if result.concurrency == 1 else f"{result.concurrency} users at once"


def table(results: list[Result]) -> str:
    lines = []
    for concurrency in sorted({r.concurrency for r in results}):
        level = [r for r in results if r.concurrency == concurrency]
        refs = {r.name: r.updates_per_second for r in level if r.name in (PACKAGE, REDIS, PYMONGO)}
        lines.append(f"\n{level_name(level[0])} ({level[0].users} users)")
        header = f"{'storage':42} {'updates/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} {'per update':>11}"
        header += "".join(f" {'vs ' + short(name):>14}" for name in refs)
        lines.append(header)
        for r in level:
            per_update = "-" if r.per_update is None else f"{r.per_update:.2f}"
            row = (
                f"{r.name:42} {r.updates_per_second:10.0f} {r.latency_ms(0.5):8.2f} "
                f"{r.latency_ms(0.99):8.2f} {r.errors:7d} {per_update:>11}"
            )
            row += "".join(f" {ratio(r.updates_per_second, base):>14}" for base in refs.values())
            lines.append(row)
    return "\n".join(lines)


def short(name: str) -> str:
    return {PACKAGE: "sa-storage", REDIS: "Redis", PYMONGO: "PyMongoSt."}[name]


def ratio(value: float, base: float) -> str:
    return f"{value / base:.1f}x" if base else "-"


def targets(results: list[Result]) -> list[tuple[str, bool]]:
    """The issue's targets, each with whether this run met it."""
    by = {(r.name, r.concurrency): r for r in results}
    levels = sorted({r.concurrency for r in results})
    checks: list[tuple[str, bool]] = []
    sqlite_1, package_1 = by.get((OURS_SQLITE, levels[0])), by.get((PACKAGE, levels[0]))
    if sqlite_1 and package_1:
        checks.append(
            (
                f"SQLite, 1 user: {sqlite_1.updates_per_second / package_1.updates_per_second:.1f}x "
                "aiogram-sqlalchemy-storage (>= 10x)",
                sqlite_1.updates_per_second >= 10 * package_1.updates_per_second,
            )
        )
    for level in levels[1:]:
        ours = by[(OURS_SQLITE, level)]
        checks.append((f"SQLite, {level} at once: {ours.errors} errors (0)", ours.errors == 0))
    middle = levels[1] if len(levels) > 1 else levels[0]
    redis_mid = by.get((REDIS, middle))
    if redis_mid:
        ours = by[(OURS_SQLITE, middle)]
        share = ours.updates_per_second / redis_mid.updates_per_second
        checks.append((f"SQLite, {middle} at once: {share:.2f} of RedisStorage (>= 0.5)", share >= 0.5))
    sqlite_counts = [by[(OURS_SQLITE, level)].per_update or 0 for level in levels]
    average = sum(sqlite_counts) / len(sqlite_counts)
    checks.append((f"SQLite: {average:.2f} statements per update (<= 3)", average <= 3))
    for name in OURS_MONGO:
        for level in levels:
            mongo, reference = by.get((name, level)), by.get((PYMONGO, level))
            if mongo and reference:
                checks.append(
                    (
                        f"{name}, {level_name(mongo)}: {mongo.updates_per_second:.0f} vs PyMongoStorage "
                        f"{reference.updates_per_second:.0f} updates/s (>=)",
                        mongo.updates_per_second >= reference.updates_per_second,
                    )
                )
        counts = [by[(name, level)].per_update or 0 for level in levels if (name, level) in by]
        if counts:
            average = sum(counts) / len(counts)
            checks.append((f"{name}: {average:.2f} commands per update (<= 3)", average <= 3))
    return checks


async def storages_benchmark(args: argparse.Namespace) -> tuple[list[Result], list[tuple[str, bool]]]:
    from tests.support.mongo_server import WireProtocolServer

    async with temporary_folder() as folder:
        server = None
        mongo_url = args.mongo_url
        if not mongo_url:
            server = WireProtocolServer(folder)
            server.start()
            mongo_url = server.url
        sql_urls = {name: url for name, url in (("PostgreSQL", args.postgres_url), ("MySQL", args.mysql_url)) if url}
        try:
            results = await run_all(
                QUICK_LEVELS if args.quick else FULL_LEVELS,
                folder,
                mongo_url,
                args.redis_url,
                sql_urls,
                rounds=2 if args.quick else args.rounds,
                progress=lambda r: print(
                    f"  {r.name}, {level_name(r)}: {r.updates_per_second:.0f} updates/s", file=sys.stderr
                ),
            )
        finally:
            if server is not None:
                server.stop()
    return results, targets(results)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print("FSM storages: the questionnaire workload", file=sys.stderr)
    results, checks = asyncio.run(storages_benchmark(args))
    print(table(results))
    print("\nTargets")
    for text, met in checks:
        print(f"  [{'met' if met else 'MISSED'}] {text}")
    report: dict[str, Any] = {
        "storages": [
            {
                **asdict(r),
                "latencies": None,
                "updates_per_second": r.updates_per_second,
                "p50_ms": r.latency_ms(0.5),
                "p99_ms": r.latency_ms(0.99),
                "per_update": r.per_update,
            }
            for r in results
        ],
        "targets": [{"target": text, "met": met} for text, met in checks],
    }
    if not args.no_bot:
        from benchmarks.whole_bot import run_whole_bot_benchmark

        report["bot"] = run_whole_bot_benchmark(quick=args.quick)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    errors = sum(r.errors for r in results if not r.name.startswith("aiogram"))
    return 1 if errors and not args.quick else 0


if __name__ == "__main__":
    sys.exit(main())
