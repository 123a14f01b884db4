"""The alert rules and the Grafana dashboard of deploy/monitoring, on Debian's Prometheus and a real bot.

promtool checks the rules and the scrape config and runs the rules' unit tests
(deploy/monitoring/alerts_test.yml). Then a real Prometheus scrapes a real
`python main.py` (polling the emulator, METRICS_PORT) every second: every metric
docs/deploy.md names is there with its labels, every query of the dashboard
answers, and Telegram refusing one chat's replies (429s), a corrupt conversation
in the database and the bot stopped each fire their alert.

The live Prometheus evaluates the rules of alerts.yml with every duration
divided by 60 (`compressed()`: a `for: 10m` becomes 10 s, a `[5m]` range 5 s):
the same expressions on a minute-for-a-second clock, as the scrape and
evaluation intervals are 1 s instead of 15 s. The durations themselves are
what alerts_test.yml checks, on promtool's simulated clock.

PROMETHEUS= (empty) leaves these tests out; `make test` installs Prometheus as root.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import ClientSession

from bot.emulator import BotAPIEmulator, Fault, running_emulator
from tests.support.bot_process import ROOT, BotProcess, started
from tests.support.questionnaire import asked
from tests.support.webhook import free_port

MONITORING = ROOT / "deploy" / "monitoring"
ALERTS = MONITORING / "alerts.yml"
ALERTS_TEST = MONITORING / "alerts_test.yml"
SCRAPE_CONFIG = MONITORING / "prometheus.yml"
DASHBOARD = MONITORING / "grafana" / "dashboards" / "questionnaire-bot.json"
DEPLOY_DOCS = ROOT / "docs" / "deploy.md"
JOB = "questionnaire-bot"
# Grafana's variables in the dashboard's queries, as Grafana fills them in for "All" processes.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$instance": ".*"}
# Labels Prometheus adds to every series it scrapes.
TARGET_LABELS = {"__name__", "job", "instance"}
WAIT_SECONDS = 45  # for anything Prometheus is to see; a loaded machine scrapes late


def binaries() -> tuple[Path, Path]:
    """Prometheus and promtool (Debian's, in /usr/bin); a missing one fails with what to do, PROMETHEUS= skips."""
    configured = os.environ.get("PROMETHEUS", "/usr/bin/prometheus")
    if not configured:
        pytest.skip("PROMETHEUS is empty: the monitoring tests are left out (make test installs prometheus)")
    server = Path(configured)
    promtool = server.with_name("promtool")
    missing = [str(path) for path in (server, promtool) if not os.access(path, os.X_OK)]
    if missing:
        pytest.fail(
            f"not found: {', '.join(missing)}: apt-get install prometheus (make test does it as root), "
            "or set PROMETHEUS= to leave the monitoring tests out"
        )
    return server, promtool


def promtool(*arguments: str | Path) -> str:
    _, tool = binaries()
    done = subprocess.run([tool, *arguments], cwd=MONITORING, capture_output=True, text=True, timeout=60, check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"promtool {' '.join(map(str, arguments))} failed:\n{output}"
    return output


def rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    data = json.loads(DASHBOARD.read_text())
    assert isinstance(data, dict)
    return data


def panel_queries() -> dict[str, str]:
    """Each query of each panel of the dashboard, by "panel title/refId"."""
    return {
        f"{panel['title']}/{target['refId']}": target["expr"]
        for panel in dashboard()["panels"]
        for target in panel["targets"]
    }


def as_grafana_sends(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"a Grafana variable the test does not fill in: {expr}"
    return expr


def documented_metrics() -> dict[str, set[str]]:
    """docs/deploy.md's metrics table: each `bot_...{labels}` it names, and its labels."""
    table = DEPLOY_DOCS.read_text().split("| metric | what it says |")[1].split("\n\n")[0]
    found = {
        name: set(labels.split(",")) if labels else set()
        for name, labels in re.findall(r"`(bot_\w+)(?:\{([\w,]+)\})?`", table)
    }
    assert len(found) >= 9, f"the metrics table of docs/deploy.md was not found: {found}"
    return found


def metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\b((?:bot|process)_\w+|up|ALERTS)\s*\{", expr))


_DURATION = re.compile(r"(\d+)([smh])")


def compressed(duration: str) -> str:
    """A Prometheus duration divided by 60: 10m -> 10s, 1h -> 1m, 30s -> 500ms."""
    match = _DURATION.fullmatch(duration)
    assert match, f"a duration like 5m: {duration!r}"
    amount, unit = int(match.group(1)), match.group(2)
    return {"h": f"{amount}m", "m": f"{amount}s", "s": f"{amount * 1000 // 60}ms"}[unit]


def compressed_rules() -> str:
    """alerts.yml on a minute-for-a-second clock: each `for:` and each range `[...]` divided by 60."""
    data = yaml.safe_load(ALERTS.read_text())
    for group in data["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = compressed(rule["for"])
            rule["expr"] = re.sub(r"\[(\w+)\]", lambda match: f"[{compressed(match.group(1))}]", rule["expr"])
    return yaml.safe_dump(data, sort_keys=False)


# --- promtool ----------------------------------------------------------------


def test_promtool_accepts_the_rules_and_the_scrape_config() -> None:
    assert f"SUCCESS: {len(rules())} rules found" in promtool("check", "rules", ALERTS)
    promtool("check", "config", SCRAPE_CONFIG)


def test_the_alerts_pass_their_unit_tests_and_each_has_one_that_fires_it() -> None:
    assert "SUCCESS" in promtool("test", "rules", ALERTS_TEST)
    tests = yaml.safe_load(ALERTS_TEST.read_text())
    assert tests["rule_files"] == [ALERTS.name]
    fired = {case["alertname"] for test in tests["tests"] for case in test["alert_rule_test"] if case.get("exp_alerts")}
    assert {rule["alert"] for rule in rules()} == fired


def test_every_alert_is_in_the_docs_with_what_to_do_and_each_has_a_severity_and_summary() -> None:
    docs = DEPLOY_DOCS.read_text()
    for rule in rules():
        severity = rule["labels"]["severity"]
        assert severity in {"critical", "warning"}
        assert rule["annotations"]["summary"]
        row = f"| `{rule['alert']}` ({severity}) |"
        assert row in docs, f"docs/deploy.md's table of alerts has no row {row}"
        assert docs.split(row)[1].split("\n")[0].count("|") == 2, f"{row}: when it fires, and what to do"


def test_the_compressed_rules_are_rules_too(tmp_path: Path) -> None:
    variant = tmp_path / "alerts.yml"
    variant.write_text(compressed_rules())
    assert "[5m]" not in variant.read_text()
    assert "[5s]" in variant.read_text()
    promtool("check", "rules", variant)


# --- the dashboard -----------------------------------------------------------


def test_the_dashboard_queries_only_the_bots_job_and_chosen_processes_on_its_datasource_variable() -> None:
    board = dashboard()
    assert board["uid"] == JOB
    variables = {variable["name"]: variable for variable in board["templating"]["list"]}
    assert variables["datasource"]["query"] == "prometheus"
    assert f'up{{job="{JOB}"}}' in variables["instance"]["definition"]
    panels = board["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels)
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["description"], panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        columns, rows = range(grid["x"], grid["x"] + grid["w"]), range(grid["y"], grid["y"] + grid["h"])
        mine = {(x, y) for x in columns for y in rows}
        assert not mine & cells, f"{panel['title']} overlaps another panel"
        cells |= mine
        for target in panel["targets"]:
            expr = target["expr"]
            assert metric_names(expr), expr
            for selector in re.findall(r"\b(?:bot|process)_\w+\{([^}]*)\}", expr):
                assert f'job="{JOB}"' in selector, expr
                assert 'instance=~"$instance"' in selector, expr


def test_every_bot_metric_the_dashboard_shows_is_documented() -> None:
    documented = documented_metrics()
    for name, expr in panel_queries().items():
        for metric in metric_names(expr):
            if metric.startswith("bot_"):
                base = re.sub(r"_(bucket|count|sum)$", "", metric)
                assert base in documented or metric in documented, f"{name}: {metric} is not in docs/deploy.md"


# --- a real Prometheus scraping a real bot -------------------------------------


class Prometheus:
    """The HTTP API of the Prometheus at `url`."""

    def __init__(self, session: ClientSession, url: str) -> None:
        self.session, self.url = session, url

    async def get(self, path: str, **params: str) -> Any:
        async with self.session.get(f"{self.url}{path}", params=params) as response:
            body = await response.json()
        assert body["status"] == "success", f"{path} {params}: {body}"
        return body["data"]

    async def query(self, expr: str) -> list[dict[str, Any]]:
        data = await self.get("/api/v1/query", query=expr)
        assert data["resultType"] == "vector", expr
        result: list[dict[str, Any]] = data["result"]
        return result

    async def firing(self) -> dict[str, list[dict[str, str]]]:
        """The alerts firing now: their labels, by name."""
        alerts: dict[str, list[dict[str, str]]] = {}
        for alert in (await self.get("/api/v1/alerts"))["alerts"]:
            if alert["state"] == "firing":
                alerts.setdefault(alert["labels"]["alertname"], []).append(alert["labels"])
        return alerts

    async def until(self, what: str, check: Callable[[], Any], seconds: float = WAIT_SECONDS) -> Any:
        """Call `check` (a coroutine function) until it returns something true, and return that."""
        deadline = time.monotonic() + seconds
        last: Any = None
        while time.monotonic() < deadline:
            if last := await check():
                return last
            await asyncio.sleep(0.25)
        msg = f"Prometheus did not see {what} within {seconds} s (last: {last}); alerts: {await self.firing()}"
        raise AssertionError(msg)

    async def until_firing(self, *names: str) -> dict[str, list[dict[str, str]]]:
        async def fired() -> dict[str, list[dict[str, str]]] | None:
            alerts = await self.firing()
            return alerts if set(names) <= set(alerts) else None

        found: dict[str, list[dict[str, str]]] = await self.until(f"{', '.join(names)} firing", fired)
        return found


def prometheus_config(rules_file: Path, metrics_port: int) -> dict[str, Any]:
    """deploy/monitoring/prometheus.yml, scraping the test's bot every second, with the compressed rules."""
    config = yaml.safe_load(SCRAPE_CONFIG.read_text())
    job = next(job for job in config["scrape_configs"] if job["job_name"] == JOB)
    del job["dns_sd_configs"], job["relabel_configs"]
    job["static_configs"] = [{"targets": [f"127.0.0.1:{metrics_port}"]}]
    config["scrape_configs"] = [job]
    config["global"] = {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(rules_file)]
    assert isinstance(config, dict)
    return config


def corrupt_conversation(database: Path, user_id: int) -> None:
    """Write what no storage can read as the user's conversation data, behind the bot's back."""
    with sqlite3.connect(database, timeout=30) as connection:
        changed = connection.execute(
            "UPDATE aiogram_fsm_data SET data = 'not json {' WHERE id = ?", (f"fsm:{user_id}:{user_id}",)
        ).rowcount
    assert changed == 1


async def test_prometheus_scrapes_the_bot_the_dashboard_answers_and_faults_fire_their_alerts(tmp_path: Path) -> None:
    server, _ = binaries()
    metrics_port, prometheus_port = free_port(), free_port()
    rules_file = tmp_path / "alerts.yml"
    rules_file.write_text(compressed_rules())
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump(prometheus_config(rules_file, metrics_port)))
    database = tmp_path / "bot.db"
    url = f"http://127.0.0.1:{prometheus_port}"
    async with (
        running_emulator(BotAPIEmulator()) as (emulator, api_url),
        BotProcess(
            emulator,
            api_url,
            tmp_path / "bot.log",
            {
                "DATABASE_URL": f"sqlite+aiosqlite:///{database}",
                "METRICS_PORT": str(metrics_port),
                "WEB_SERVER_HOST": "127.0.0.1",
                "FSM_TTL": "8s",  # a sweep every 2 s: the expiry panel has data
                "LOG_LEVEL": "INFO",
            },
        ) as bot,
        ClientSession() as session,
    ):
        await bot.start()  # before Prometheus, whose first scrapes would otherwise find nothing (BotDown)
        with (tmp_path / "prometheus.log").open("wb") as prometheus_log:
            async with started(
                server,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'data'}",
                f"--web.listen-address=127.0.0.1:{prometheus_port}",
                stdout=prometheus_log,
                stderr=subprocess.STDOUT,
            ):
                await drive_faults_until_alerts_fire(Prometheus(session, url), bot, database, metrics_port)


async def drive_faults_until_alerts_fire(prometheus: Prometheus, bot: BotProcess, database: Path, port: int) -> None:
    await until_ready(prometheus.session, prometheus.url)
    await prometheus.until(f'up{{job="{JOB}"}} == 1', lambda: prometheus.query(f'up{{job="{JOB}"}} == 1'))
    first_question = asked()[0].prompt

    # A conversation (updates, lock waits, handling times), and one whose data is corrupt.
    await bot.say(1, "/start", "Ann")
    await bot.say(2, "/start")
    corrupt_conversation(database, 2)
    await bot.say(2, "Bob")
    await prometheus.until(
        "the corrupt conversation counted",
        lambda: prometheus.query('bot_storage_errors_total{kind="CorruptDataError", where="update"} > 0'),
    )

    # Telegram refuses chat 3's replies with 429s until the fault is taken away.
    refusal = Fault(method="sendMessage", status=429, count=1_000_000, retry_after=1, chat=3)
    bot.emulator.faults.append(refusal)
    await bot.emulator.user_sends(3, {"text": "/start"})
    fired = await prometheus.until_firing("BotFloodControl", "BotRepliesStuck", "BotStorageErrors")
    instance = f"127.0.0.1:{port}"
    assert fired["BotFloodControl"] == [
        {"alertname": "BotFloodControl", "job": JOB, "instance": instance, "severity": "warning"}
    ]
    assert fired["BotStorageErrors"][0]["kind"] == "CorruptDataError"
    assert not {"BotDown", "BotMissing", "BotDatabaseUnavailable", "BotExpiryFailing"} & set(fired)

    await check_the_documented_metrics(prometheus)
    await check_the_dashboard_answers(prometheus)

    refusal.count = 0
    await bot.wait_for(3, first_question)
    await prometheus.until(
        "the replies waiting back to 0", lambda: prometheus.query(f'bot_replies_waiting{{job="{JOB}"}} == 0')
    )

    assert await bot.stop(signal.SIGTERM) == 0
    down = await prometheus.until_firing("BotDown")
    assert down["BotDown"][0]["instance"] == instance


async def until_ready(session: ClientSession, url: str) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        try:
            async with session.get(f"{url}/-/ready") as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        assert time.monotonic() < deadline, f"Prometheus did not get ready within {WAIT_SECONDS} s"
        await asyncio.sleep(0.1)


async def check_the_documented_metrics(prometheus: Prometheus) -> None:
    """Each metric docs/deploy.md names, scraped with exactly the labels it names (and le for a histogram)."""
    series = await prometheus.get("/api/v1/series", **{"match[]": f'{{job="{JOB}", __name__=~"bot_.*"}}'})
    scraped: dict[str, set[str]] = {}
    for labels in series:
        scraped.setdefault(labels["__name__"], set()).update(set(labels) - TARGET_LABELS)
    for name, labels in documented_metrics().items():
        if name in scraped:
            assert scraped[name] == labels, f"{name}: {scraped[name]}, docs/deploy.md says {labels}"
        else:  # a histogram
            assert scraped.get(f"{name}_bucket") == {*labels, "le"}, f"{name} is not scraped: {sorted(scraped)}"
            assert scraped.get(f"{name}_count") == labels, name
    # prometheus_client adds X_created (when the series began) beside each counter X_total and histogram X.
    documented = set(documented_metrics())
    undocumented = {
        name
        for name in scraped
        if not {name, re.sub(r"_(bucket|count|sum|created)$", "", name), re.sub(r"_created$", "_total", name)}
        & documented
    }
    assert not undocumented, f"not in docs/deploy.md's table: {undocumented}"
    assert await prometheus.query(f'process_resident_memory_bytes{{job="{JOB}"}}')


async def check_the_dashboard_answers(prometheus: Prometheus) -> None:
    """Every query of every panel returns data, as Grafana would send it for all processes."""
    instances = await prometheus.get("/api/v1/label/instance/values", **{"match[]": f'up{{job="{JOB}"}}'})
    assert len(instances) == 1  # what the dashboard's process picker offers
    empty = []
    for panel in dashboard()["panels"]:
        for target in panel["targets"]:
            name = f"{panel['title']}/{target['refId']}"
            result = await prometheus.query(as_grafana_sends(target["expr"]))
            if not result:
                empty.append(name)
            # The legend names each line by labels the query's answer has.
            for label in re.findall(r"\{\{(\w+)\}\}", target["legendFormat"]):
                assert all(label in sample["metric"] for sample in result), f"{name}: no {label} in {result}"
    assert not empty, f"dashboard panels without data: {empty}"
    annotation = dashboard()["annotations"]["list"][0]["expr"]
    assert await prometheus.query(annotation)
