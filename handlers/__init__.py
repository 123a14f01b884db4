"""Routers, in the order updates meet them: commands first, the flow, the catch-alls last."""

from aiogram import Router

from handlers import common, errors, fallback, questionnaire


def get_routers() -> list[Router]:
    return [errors.router, common.router, questionnaire.router, fallback.router]
