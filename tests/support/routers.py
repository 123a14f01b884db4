"""Build the bot with a router of the test's own, listed where README says a feature goes."""

from __future__ import annotations

import pytest
from aiogram import Router

import bot.setup
import handlers
from handlers import fallback


def add_router(monkeypatch: pytest.MonkeyPatch, router: Router) -> None:
    """Every Dispatcher built in this test includes `router` just before `fallback.router` (README's recipe)."""
    routers = handlers.get_routers()  # with any router a test added before
    routers.insert(routers.index(fallback.router), router)
    monkeypatch.setattr(bot.setup, "get_routers", lambda: routers)
    monkeypatch.setattr(handlers, "get_routers", lambda: routers)  # what a restart lets go of
