"""Start the questionnaire bot: `python main.py` (settings come from the environment and .env).

`python main.py --sandbox` runs the same bot against a local Bot API emulator
and lets you chat with it in the terminal: no token or network needed.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import sys

from config import SettingsError, load_settings


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="A questionnaire bot whose conversations survive restarts.")
    parser.add_argument("--env-file", default=".env", help="settings file to read (default: .env)")
    parser.add_argument(
        "--sandbox",
        action="store_true",
        help="chat with the bot in this terminal, through a local Bot API emulator (no token needed)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sandbox_token = None
    if args.sandbox:
        from bot.emulator import EMULATOR_BOT_TOKEN

        sandbox_token = EMULATOR_BOT_TOKEN
    try:
        settings = load_settings(args.env_file, bot_token=sandbox_token)
    except SettingsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    # Imported only now: aiogram takes seconds to import, and a settings
    # mistake should be reported at once. The import builds several hundred
    # thousand objects and frees none, so the garbage collector is kept out of
    # it (it would only scan them over and over) and then told to leave them be.
    gc.disable()
    try:
        from bot.log import configure_logging
        from bot.polling import run_polling
        from bot.running import StartupError
        from bot.webhook import run_webhook
    finally:
        gc.freeze()
        gc.enable()

    # In the sandbox, INFO lines would bury the conversation.
    level = "WARNING" if args.sandbox and settings.log_level == "INFO" else settings.log_level
    secrets = [settings.bot_token.get_secret_value()]
    if settings.webhook_secret is not None:
        secrets.append(settings.webhook_secret.get_secret_value())
    configure_logging(level, secrets=secrets)
    try:
        if args.sandbox:
            from bot.emulator.sandbox import run_sandbox

            asyncio.run(run_sandbox(settings))
        elif settings.webhook_url:
            asyncio.run(run_webhook(settings))
        else:
            asyncio.run(run_polling(settings))
    except StartupError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    except Exception:
        # Through logging, so the token is redacted even from a traceback.
        logging.getLogger("main").critical("The bot stopped on an unexpected error", exc_info=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
