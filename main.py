"""Start the questionnaire bot: `python main.py` (settings come from the environment and .env).

`python main.py --sandbox` runs the same bot against a local Bot API emulator
and lets you chat with it in the terminal: no token or network needed.
`python main.py export | stats | migrate` are the owner's commands (admin/):
they read the same settings, and need no token.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import NoReturn

from config import SettingsError, load_settings, load_storage_settings


class OneLineParser(argparse.ArgumentParser):
    """Bad arguments get one line and exit code 2 (argparse's own adds the whole usage)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = OneLineParser(prog="main.py", description="A questionnaire bot whose conversations survive restarts.")
    parser.add_argument("--env-file", default=".env", help="settings file to read (default: .env)")
    parser.add_argument(
        "--sandbox",
        action="store_true",
        help="chat with the bot in this terminal, through a local Bot API emulator (no token needed)",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", title="the owner's commands")
    export = commands.add_parser("export", help="write the completed forms as CSV, JSON or JSON Lines")
    export.add_argument("--format", choices=("csv", "json", "jsonl"), default="csv", help="(default: csv)")
    export.add_argument("--since", type=parse_since, help="only those completed on or after this UTC date or time")
    export.add_argument("--output", type=Path, help="write to this file (default: standard output)")
    export.add_argument("--kind", help="the form to export, e.g. feedback (default: questionnaire)")
    commands.add_parser("stats", help="how many started, finished and abandoned, and the answers")
    migrate = commands.add_parser("migrate", help="copy conversations and answers to another database")
    migrate.add_argument(
        "--to", required=True, metavar="URL", help="sqlite:///file.db, postgresql://..., mysql://..., mongodb://host/db"
    )
    migrate.add_argument("--from", dest="source", metavar="URL", help="(default: the database the settings name)")
    migrate.add_argument("--overwrite", action="store_true", help="replace what the target holds differently")
    return parser.parse_args(argv)


def parse_since(text: str) -> datetime:
    """`2026-11-01` or `2026-11-01T12:00`: in UTC unless it names its zone."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date: {text!r} (write 2026-11-01 or 2026-11-01T12:00)") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def run_command(args: argparse.Namespace) -> int:
    """One of the owner's commands: exit code 2 and one line for anything it cannot do as asked."""
    from admin.errors import CommandError
    from storage import StorageError

    try:
        settings = load_storage_settings(args.env_file)
        if args.command == "export":
            from admin.export import export

            return asyncio.run(export(settings, args.format, args.since, args.output, args.kind))
        if args.command == "stats":
            from admin.stats import stats

            return asyncio.run(stats(settings))
        from admin.migrate import migrate

        return asyncio.run(migrate(settings, args.to, args.source, args.overwrite))
    except BrokenPipeError:
        # Whatever read the output stopped early (`export | head`): nothing to say, nothing left to flush.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (SettingsError, CommandError, StorageError, OSError, ValueError) as error:
        # Each says what went wrong in a line: a bad path, an unreachable or too slow database.
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.command:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        return run_command(args)
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
        from states import FormError

        try:
            from bot.log import configure_logging
            from bot.polling import LeadershipLostError, run_polling
            from bot.running import StartupError
            from bot.webhook import run_webhook
        except FormError as error:  # a form the handlers cannot ask, named with what to change
            print(f"error: {error}", file=sys.stderr)
            return 2
    finally:
        gc.freeze()
        gc.enable()

    # In the sandbox, INFO lines would bury the conversation.
    level = "WARNING" if args.sandbox and settings.log_level == "INFO" else settings.log_level
    secrets = [settings.bot_token.get_secret_value()]
    if settings.webhook_secret is not None:
        secrets.append(settings.webhook_secret.get_secret_value())
    configure_logging(level, secrets=secrets, json_lines=settings.log_format == "json" and not args.sandbox)
    try:
        if args.sandbox:
            from bot.emulator.sandbox import run_sandbox

            asyncio.run(run_sandbox(settings))
        elif settings.webhook_url:
            asyncio.run(run_webhook(settings))
        else:
            asyncio.run(run_polling(settings))
    except StartupError as error:
        if settings.log_format == "json":  # a log shipper reads every line
            logging.getLogger("main").critical("The bot cannot start: %s", error)
        else:
            print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    except LeadershipLostError as error:
        # Started again (compose's restart, systemd's Restart=on-failure), it stands by.
        logging.getLogger("main").error("The bot stopped polling: %s; started again, it stands by", error)
        return 1
    except Exception:
        # Through logging, so the token is redacted even from a traceback.
        logging.getLogger("main").critical("The bot stopped on an unexpected error", exc_info=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
