"""Telegram without Telegram: a Bot API emulator (server.py), the terminal sandbox (sandbox.py)
and the replicas demo (replicas.py). Tests and `make sandbox` use them; the bot itself never does.
"""

from bot.emulator.flood import FloodControl, FloodLimits
from bot.emulator.server import EMULATOR_BOT_TOKEN, BotAPIEmulator, Chaos, Fault, running_emulator

__all__ = [
    "EMULATOR_BOT_TOKEN",
    "BotAPIEmulator",
    "Chaos",
    "Fault",
    "FloodControl",
    "FloodLimits",
    "running_emulator",
]
