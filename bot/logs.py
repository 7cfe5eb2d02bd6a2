"""Logging set-up that can never leak a secret, as text for people or JSON for a log shipper.

A filter on every handler replaces each configured secret (the Discord token, the Segmind key)
with a mask before anything is written, whatever the module that logged it — including
exceptions that echo request headers. In JSON mode each record is one object per line, with
the job id as a field when the record is about one job.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from bot.config import MASK, LogFormat

# The job a job task works on. `job_context()` gives each job task its own, so every line it
# logs — from the lifecycle, the Segmind client or the Discord output — carries the id.
current_job_id: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "current_job_id", default=None
)


def job_context(job_id: int) -> contextvars.Context:
    """A copy of the current context in which `current_job_id` is `job_id` (for a task)."""
    context = contextvars.copy_context()
    context.run(current_job_id.set, job_id)
    return context


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
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        return True


class JobIdFilter(logging.Filter):
    """Sets `record.job_id`: the job task's id, else the id a lifecycle line names first.

    Lines about a job logged outside its task (a cancel button, the resume at start-up) follow
    the convention `log.info("job %s ...", job_id, ...)`; reading that first argument keeps the
    call sites as they are."""

    def filter(self, record: logging.LogRecord) -> bool:
        job_id = current_job_id.get()
        if job_id is None and isinstance(record.msg, str) and record.msg.startswith("job %s"):
            args = record.args
            first = args[0] if isinstance(args, tuple) and args else None
            if isinstance(first, int) and not isinstance(first, bool):
                job_id = first
        if job_id is not None or not hasattr(record, "job_id"):
            record.job_id = job_id
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, job_id, and the traceback."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        job_id = getattr(record, "job_id", None)
        if job_id is not None:
            entry["job_id"] = job_id
        # The redacting filter has already turned exc_info into a masked exc_text; without
        # secrets to mask it leaves exc_info, rendered here.
        if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = record.stack_info
        return json.dumps(entry, ensure_ascii=False, default=str)


def json_handler(redactor: RedactingFilter, stream: Any = None) -> logging.Handler:
    """A stream handler writing JSON lines, with the job id and the redaction applied."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(JobIdFilter())  # first: it reads the job id from the unmasked arguments
    handler.addFilter(redactor)
    return handler


def setup_logging(
    secrets: Iterable[str], level: int = logging.INFO, log_format: LogFormat = "text"
) -> RedactingFilter:
    """discord.py's colourful root handler (text) or JSON lines (json), with the redacting
    filter on every handler."""
    redactor = RedactingFilter(secrets)
    if log_format == "json":
        root = logging.getLogger()
        for old in list(root.handlers):
            root.removeHandler(old)
        root.addHandler(json_handler(redactor))
        root.setLevel(level)
        return redactor
    import discord  # only the text format uses discord.py's handler

    discord.utils.setup_logging(level=level, root=True)
    for handler in logging.getLogger().handlers:
        handler.addFilter(JobIdFilter())
        handler.addFilter(redactor)
    return redactor
