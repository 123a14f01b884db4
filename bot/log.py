"""Logging set-up: one handler on stderr that never prints a secret, as text or as JSON lines."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable
from datetime import UTC, datetime

REDACTED = "[redacted]"


class RedactSecrets(logging.Filter):
    """Replace secrets in messages and tracebacks, whichever library logged them."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self._secrets = sorted({secret for secret in secrets if secret}, key=len, reverse=True)

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = self.redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        return True


class JsonLines(logging.Formatter):
    """One JSON object per line (LOG_FORMAT=json): time, level, logger, message, and exception if any."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:  # already redacted by RedactSecrets
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        # ensure_ascii: a line stays one line and ASCII whatever a message holds.
        return json.dumps(entry, ensure_ascii=True)


def configure_logging(level: str, secrets: Iterable[str] = (), json_lines: bool = False) -> None:
    """Configure the root logger once: `level`, to stderr, secrets redacted; JSON lines if asked."""
    handler = logging.StreamHandler(sys.stderr)
    formatter = JsonLines() if json_lines else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    handler.setFormatter(formatter)
    handler.addFilter(RedactSecrets(secrets))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    # Python's warnings too, or they would be the one plain-text line among the JSON ones.
    logging.captureWarnings(json_lines)
