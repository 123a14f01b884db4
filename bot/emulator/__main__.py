"""`python -m bot.emulator --port 8081`: the emulator alone, for a bot started with TELEGRAM_API_URL."""

from bot.emulator.server import main

main()
