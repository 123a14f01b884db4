"""Routers, in the order updates meet them: commands first, the flow, the catch-all last."""

from aiogram import Router

from handlers import common, fallback, questionnaire


def get_routers() -> list[Router]:
    return [common.router, questionnaire.router, fallback.router]
