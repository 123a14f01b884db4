"""compose.yaml, checked as far as a machine without a Docker engine can check it.

The file is read as compose reads it (YAML merge keys, `${VAR:-default}` and
`${VAR:?error}` filled in from a .env), and what it gives the bot is handed to
config.py: every setting it names exists, and its values are accepted.
"""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath
from typing import Any
from unittest import mock

import pytest
import yaml
from pydantic import ValidationError

from bot.emulator import EMULATOR_BOT_TOKEN
from config import Settings
from tests.support.bot_process import ROOT

COMPOSE = ROOT / "compose.yaml"
DOTENV = {
    "BOT_TOKEN": EMULATOR_BOT_TOKEN,
    "POSTGRES_PASSWORD": "0123456789abcdef",
    "WEBHOOK_SECRET": "test-secret_0123456789",
    "BOT_DOMAIN": "bot.example.com",
}
BOT_SERVICES = ("bot", "replica-1", "replica-2", "replica-3")
REPLICAS = BOT_SERVICES[1:]
MONITORING = ("prometheus", "grafana")
_VARIABLE = re.compile(r"\$\$|\$\{(?P<name>[A-Za-z_]\w*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}|\$(?P<bare>[A-Za-z_]\w*)")


class MissingVariableError(Exception):
    pass


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's variable substitution, on every string of the file."""
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group("name") or match.group("bare")
        op, arg = match.group("op"), match.group("arg") or ""
        present = env.get(name)
        missing = present is None or (op is not None and op.startswith(":") and present == "")
        if op and op.endswith("?") and missing:
            raise MissingVariableError(f"{name}: {arg}")
        if op and op.endswith("-") and missing:
            return arg
        return present or ""

    return _VARIABLE.sub(substitute, value)


def load(env: dict[str, str]) -> dict[str, Any]:
    data = interpolate(yaml.safe_load(COMPOSE.read_text()), env)
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load(DOTENV)


def settings_of(service: dict[str, Any]) -> Settings:
    """The settings the bot in this service reads: its environment alone, as in its container."""
    environment = service["environment"]
    assert isinstance(environment, dict), "environment as a mapping, so each setting is named once"
    with mock.patch.dict(os.environ, {name: str(value) for name, value in environment.items()}, clear=True):
        return Settings(_env_file=None)


def test_the_bot_and_postgres_start_without_a_profile_the_replicas_and_monitoring_with_one(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    assert set(services) == {"postgres", "bot", *REPLICAS, "proxy", *MONITORING}
    assert "profiles" not in services["postgres"]
    assert "profiles" not in services["bot"]
    for name in (*REPLICAS, "proxy"):
        assert services[name]["profiles"] == ["replicas"]
    for name in MONITORING:
        assert services[name]["profiles"] == ["monitoring"]


@pytest.mark.parametrize("name", BOT_SERVICES)
def test_every_bot_service_names_only_known_settings(compose: dict[str, Any], name: str) -> None:
    environment = compose["services"][name]["environment"]
    known = {field.upper() for field in Settings.model_fields}
    assert set(environment) <= known, f"{name}: not settings of config.py: {set(environment) - known}"


@pytest.mark.parametrize("name", BOT_SERVICES)
def test_every_bot_service_is_built_from_the_repository_and_its_settings_are_accepted(
    compose: dict[str, Any], name: str
) -> None:
    service = compose["services"][name]
    build = service["build"]
    context = build if isinstance(build, str) else build["context"]
    assert (COMPOSE.parent / context).resolve() == ROOT
    assert (ROOT / "Dockerfile").is_file()
    settings = settings_of(service)
    assert settings.database_url.startswith("postgresql+asyncpg://bot:")
    assert settings.log_format == "json"
    # A stop gives the updates in progress SHUTDOWN_TIMEOUT before compose kills the process.
    assert parse_seconds(service["stop_grace_period"]) > settings.shutdown_timeout


def test_the_polling_bot_keeps_its_data_and_serves_metrics(compose: dict[str, Any]) -> None:
    bot = compose["services"]["bot"]
    settings = settings_of(bot)
    assert settings.webhook_url is None
    assert settings.metrics_port is not None
    assert str(settings.metrics_port) in bot["expose"]
    assert any(volume.endswith(":/app/data") for volume in bot["volumes"])


def test_the_polling_bot_runs_a_standby_beside_the_one_that_polls(compose: dict[str, Any]) -> None:
    bot = compose["services"]["bot"]
    assert bot["deploy"]["replicas"] == 2
    assert bot["restart"] == "unless-stopped"  # one that lost the lock exits 1 and stands by again
    assert settings_of(bot).database_url.startswith("postgresql")  # a lock both containers share


def test_the_replicas_are_webhook_servers_the_proxy_reaches(compose: dict[str, Any]) -> None:
    caddyfile = (ROOT / "deploy" / "Caddyfile").read_text()
    for name in REPLICAS:
        settings = settings_of(compose["services"][name])
        assert settings.webhook_url == "https://bot.example.com/telegram/updates"
        assert settings.webhook_secret is not None
        assert f"handle {settings.webhook_path} " in caddyfile
        assert f"{name}:{settings.web_server_port}" in caddyfile
        assert "/healthz" in " ".join(compose["services"][name]["healthcheck"]["test"])
    proxy = compose["services"]["proxy"]
    assert {"80:80", "443:443"} <= set(proxy["ports"])
    assert "./deploy/Caddyfile:/etc/caddy/Caddyfile:ro" in proxy["volumes"]
    assert proxy["environment"]["BOT_DOMAIN"] == "bot.example.com"
    assert all(proxy["depends_on"][name]["condition"] == "service_healthy" for name in REPLICAS)


def test_postgres_has_a_healthcheck_a_named_volume_and_the_bots_wait_for_it(compose: dict[str, Any]) -> None:
    postgres = compose["services"]["postgres"]
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    environment = postgres["environment"]
    for name in BOT_SERVICES:
        service = compose["services"][name]
        assert service["depends_on"]["postgres"]["condition"] == "service_healthy"
        url = settings_of(service).database_url
        expected = f"//{environment['POSTGRES_USER']}:{environment['POSTGRES_PASSWORD']}@postgres:5432/"
        assert expected in url
        assert url.endswith(f"/{environment['POSTGRES_DB']}")
    named = set(compose["volumes"])
    used = {
        volume.split(":")[0]
        for service in compose["services"].values()
        for volume in service.get("volumes", [])
        if not volume.startswith(".")
    }
    assert used == named
    assert "postgres-data:/var/lib/postgresql/data" in postgres["volumes"]


@pytest.mark.parametrize("variable", ["BOT_TOKEN", "POSTGRES_PASSWORD"])
def test_a_missing_required_variable_is_named(variable: str) -> None:
    with pytest.raises(MissingVariableError, match=f"{variable}: set {variable} in .env"):
        load({name: value for name, value in DOTENV.items() if name != variable})


def test_replicas_without_their_secret_are_refused_by_the_bot() -> None:
    """WEBHOOK_SECRET is not required by compose (the polling bot needs none): the bot refuses to start."""
    without = load({name: value for name, value in DOTENV.items() if name != "WEBHOOK_SECRET"})
    service = without["services"]["replica-1"]
    with pytest.raises(ValidationError, match="WEBHOOK_SECRET is not set"):
        settings_of(service)


def mounts(service: dict[str, Any]) -> dict[str, Path]:
    """A service's bind mounts of this repository's files: the file or folder in the repository, by container path."""
    found = {}
    for volume in service["volumes"]:
        source, target, *_ = volume.split(":")
        if source.startswith("."):
            found[target] = (COMPOSE.parent / source).resolve()
            assert found[target].exists(), f"{volume}: no such file in the repository"
    return found


def test_prometheus_loads_the_scrape_config_and_alerts_and_scrapes_each_bot_where_its_metrics_are(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    prometheus = services["prometheus"]
    files = mounts(prometheus)
    config_path = next(arg.split("=", 1)[1] for arg in prometheus["command"] if arg.startswith("--config.file="))
    config = yaml.safe_load(files[config_path].read_text())
    for rule_file in config["rule_files"]:  # relative to the config file, as Prometheus reads them
        assert files[str(PurePosixPath(config_path).parent / rule_file)] == ROOT / "deploy" / "monitoring" / rule_file
    assert "127.0.0.1:9090:9090" in prometheus["ports"]  # not published beyond the machine
    (job,) = (job for job in config["scrape_configs"] if job["job_name"] == "questionnaire-bot")
    scraped = {name: sd["port"] for sd in job["dns_sd_configs"] for name in sd["names"]}
    assert set(scraped) == set(BOT_SERVICES)
    for name in BOT_SERVICES:
        settings = settings_of(services[name])
        port = settings.metrics_port or settings.web_server_port
        assert scraped[name] == port, name
        assert str(port) in services[name]["expose"]
    assert any(volume.endswith(":/prometheus") for volume in prometheus["volumes"])


def test_grafana_is_provisioned_with_the_prometheus_datasource_and_the_dashboard(compose: dict[str, Any]) -> None:
    grafana = compose["services"]["grafana"]
    files = mounts(grafana)
    datasources, providers = (
        files["/etc/grafana/provisioning/datasources"],
        files["/etc/grafana/provisioning/dashboards"],
    )
    (datasource,) = yaml.safe_load((datasources / "prometheus.yml").read_text())["datasources"]
    port = compose["services"]["prometheus"]["ports"][0].rsplit(":", 1)[1]
    assert datasource["url"] == f"http://prometheus:{port}"
    assert datasource["type"] == "prometheus"
    (provider,) = yaml.safe_load((providers / "questionnaire-bot.yml").read_text())["providers"]
    dashboards = files[provider["options"]["path"]]
    assert (dashboards / "questionnaire-bot.json").is_file()
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert files[str(PurePosixPath(home).parent)] == dashboards
    assert "127.0.0.1:3000:3000" in grafana["ports"]
    assert grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD"] == "admin"  # unless .env sets GRAFANA_ADMIN_PASSWORD
    assert (
        load({**DOTENV, "GRAFANA_ADMIN_PASSWORD": "s3cret"})["services"]["grafana"]["environment"][
            "GF_SECURITY_ADMIN_PASSWORD"
        ]
        == "s3cret"
    )


def parse_seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+)(s|m)", duration)
    assert match, f"a duration like 30s: {duration!r}"
    return int(match.group(1)) * (60 if match.group(2) == "m" else 1)
