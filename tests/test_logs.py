"""Secrets never reach a log line, even inside an exception's traceback."""

from __future__ import annotations

import asyncio
import io
import json
import logging

from bot.logs import MASK, RedactingFilter, job_context, json_handler

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


def _json_logger() -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    logger = logging.getLogger(f"test-json-{id(stream)}")
    logger.propagate = False
    logger.addHandler(json_handler(RedactingFilter((TOKEN, KEY)), stream))
    logger.setLevel(logging.INFO)
    return logger, stream


def _entries(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_never_carry_a_secret_even_in_a_traceback() -> None:
    logger, stream = _json_logger()
    logger.warning("headers were %s", {"x-api-key": KEY, "Authorization": f"Bot {TOKEN}"})
    try:
        raise RuntimeError(f"request failed with key {KEY} and token {TOKEN}")
    except RuntimeError:
        logger.exception("boom")
    out = stream.getvalue()
    assert KEY not in out and TOKEN not in out
    first, second = _entries(stream)  # one object per line
    assert MASK in str(first["message"])
    assert second["message"] == "boom" and second["level"] == "ERROR"
    assert "RuntimeError" in str(second["exception"]) and MASK in str(second["exception"])


async def test_json_lines_name_the_job_of_the_task_that_logged_them() -> None:
    logger, stream = _json_logger()

    async def job_work() -> None:
        logger.info("polling Segmind")  # says nothing of the job itself

    await asyncio.create_task(job_work(), context=job_context(42))
    logger.info("job %s cancelled in the queue by user %s", 7, 99)  # outside any job task
    logger.info("logged in as %s", "Veo")
    inside, named, unrelated = _entries(stream)
    assert inside["job_id"] == 42
    assert named["job_id"] == 7 and named["message"] == "job 7 cancelled in the queue by user 99"
    assert "job_id" not in unrelated
