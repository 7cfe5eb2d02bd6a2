"""Logging set-up that can never leak a secret.

discord.py's handler formats the records; a filter on every handler replaces each configured
secret (the Discord token, the Segmind key) with a mask before anything is written, whatever
the module that logged it — including exceptions that echo request headers.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import discord

from bot.config import MASK


class RedactingFilter(logging.Filter):
    """Masks secrets in the rendered message and in any formatted traceback."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        # Very short strings would mask ordinary words; real tokens are long.
        self._secrets = sorted({s for s in secrets if s and len(s) >= 8}, key=len, reverse=True)

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, MASK)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._secrets:
            return True
        message = record.getMessage()
        redacted = self.redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        if record.exc_info and record.exc_info[1] is not None:
            # Format the traceback once, masked, and drop exc_info so no handler re-renders it.
            formatter = logging.Formatter()
            record.exc_text = self.redact(formatter.formatException(record.exc_info))
            record.exc_info = None
        elif record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        return True


def setup_logging(secrets: Iterable[str], level: int = logging.INFO) -> RedactingFilter:
    """discord.py's colourful root handler, with the redacting filter on every handler."""
    discord.utils.setup_logging(level=level, root=True)
    redactor = RedactingFilter(secrets)
    for handler in logging.getLogger().handlers:
        handler.addFilter(redactor)
    return redactor
