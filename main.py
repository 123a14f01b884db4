"""Start the questionnaire bot: `python main.py` (settings come from the environment and .env)."""

from __future__ import annotations

import argparse
import asyncio
import sys

from config import SettingsError, load_settings


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="A questionnaire bot whose conversations survive restarts.")
    parser.add_argument("--env-file", default=".env", help="settings file to read (default: .env)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        settings = load_settings(args.env_file)
    except SettingsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    # Imported only now: aiogram takes seconds to import, and a settings
    # mistake should be reported at once.
    from bot.log import configure_logging
    from bot.polling import StartupError, run_polling

    configure_logging(settings.log_level, secrets=[settings.bot_token.get_secret_value()])
    try:
        asyncio.run(run_polling(settings))
    except StartupError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
