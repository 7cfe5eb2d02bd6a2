"""Secrets never reach a log line, even inside an exception's traceback."""

from __future__ import annotations

import io
import logging

from bot.logs import MASK, RedactingFilter

TOKEN = "MTIzNDU2Nzg5MDEyMzQ1Njc4.discord.token-value"
KEY = "SG_0123456789abcdef"


def _logger(secrets: tuple[str, ...] = (TOKEN, KEY)) -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.addFilter(RedactingFilter(secrets))
    logger = logging.getLogger(f"test-redact-{id(stream)}")
    logger.propagate = False
    logger.addHandler(handler)
    return logger, stream


def test_secret_in_message_and_args_is_masked() -> None:
    logger, stream = _logger()
    logger.warning("headers were %s", {"x-api-key": KEY, "Authorization": f"Bot {TOKEN}"})
    out = stream.getvalue()
    assert KEY not in out and TOKEN not in out and MASK in out


def test_secret_in_exception_traceback_is_masked() -> None:
    logger, stream = _logger()
    try:
        raise RuntimeError(f"request failed with key {KEY}")
    except RuntimeError:
        logger.exception("boom")
    out = stream.getvalue()
    assert "Traceback" in out and "RuntimeError" in out
    assert KEY not in out and MASK in out


def test_short_strings_are_not_treated_as_secrets() -> None:
    logger, stream = _logger(("abc",))  # a 3-character "secret" would mask ordinary words
    logger.warning("abc is fine")
    assert "abc is fine" in stream.getvalue()
