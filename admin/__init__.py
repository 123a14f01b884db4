"""The owner's commands: `python main.py export | stats | migrate`. They read the storage settings only.

Each command is a coroutine taking the settings and its parsed arguments and
returning the exit code; main.py parses and runs them. They touch the
database only through storage/ (records, completed responses), never handlers/:
they import handlers/ only to know every form the bot defines (admin/forms.py).
"""
