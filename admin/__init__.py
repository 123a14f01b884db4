"""The owner's commands: `python main.py export | stats | migrate`. They read the storage settings only.

Each command is a coroutine taking the settings and its parsed arguments and
returning the exit code; main.py parses and runs them. They touch the
database only through storage/ (records, completed responses), never handlers/:
they never import aiogram, handlers/ or states/: the forms are those the bot
described in the database at its start (admin/forms.py), so a command starts
in under a second.
"""
