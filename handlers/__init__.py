"""The handler modules, in the order updates meet their routers: commands first, the flow, the catch-alls last.

A module's `router` takes its updates; its `COMMANDS` (if any) are its entries in the bot's command
menu and in /help. A feature of your own is one more module, listed here before `fallback`.
"""

from types import ModuleType

from aiogram import Router
from aiogram.types import BotCommand

from handlers import common, errors, fallback, questionnaire


def modules() -> list[ModuleType]:
    return [errors, common, questionnaire, fallback]


def get_routers() -> list[Router]:
    return [module.router for module in modules()]


def get_commands() -> list[BotCommand]:
    """The command menu: every module's `COMMANDS`, in the modules' order."""
    return [command for module in modules() for command in getattr(module, "COMMANDS", [])]
