"""Settings: every one documented, a bad one stops start-up with one line naming it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bot.config import Settings, SettingsError, load_settings, require_discord_token

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("DISCORD_", "SEGMIND_", "VEO_")):
            monkeypatch.delenv(name)


def test_env_example_documents_every_setting_with_a_comment() -> None:
    text = (ROOT / ".env.example").read_text()
    documented = re.findall(r"^# (.+)\n([A-Z_]+)=", text, re.M)
    names = {name for _, name in documented}
    assert names == {field.upper() for field in Settings.model_fields}


def test_env_example_values_are_valid_settings(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text((ROOT / ".env.example").read_text())
    settings = load_settings(env)
    assert settings.demo_mode  # the example ships without a key
    assert settings.segmind_base_url == "https://api.segmind.com"


def test_blank_values_in_env_file_mean_unset(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text("SEGMIND_API_KEY=\nDISCORD_DEV_GUILD_ID=\nVEO_GUILD_DAILY_LIMIT=\n")
    settings = load_settings(env)
    assert settings.segmind_api_key is None
    assert settings.discord_dev_guild_id is None


def test_malformed_setting_is_named_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VEO_DEFAULT_DURATION", "7")
    with pytest.raises(SettingsError) as info:
        load_settings(None)
    message = str(info.value)
    assert "VEO_DEFAULT_DURATION" in message
    assert "\n" not in message


def test_poll_ceiling_below_floor_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VEO_POLL_FLOOR", "10")
    monkeypatch.setenv("VEO_POLL_CEILING", "5")
    with pytest.raises(SettingsError, match="VEO_POLL_CEILING"):
        load_settings(None)


def test_secret_values_never_appear_in_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEGMIND_API_KEY", "sk-very-secret-value-123")
    monkeypatch.setenv("SEGMIND_MAX_RPM", "lots")
    with pytest.raises(SettingsError) as info:
        load_settings(None)
    assert "sk-very-secret" not in str(info.value)
    settings = load_settings(None, segmind_max_rpm=5)
    assert "sk-very-secret" not in repr(settings)


def test_database_url_defaults_to_the_sqlite_file_at_veo_db_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert load_settings(None).database_url == "sqlite:///data/veo.sqlite3"
    monkeypatch.setenv("VEO_DB_PATH", "/var/lib/veo/bot.db")  # the older setting keeps working
    assert load_settings(None).database_url == "sqlite:////var/lib/veo/bot.db"
    url = "postgresql://veo:pg-secret-pass@db.internal:5432/veo"
    monkeypatch.setenv("VEO_DATABASE_URL", url)  # the URL wins
    settings = load_settings(None)
    assert settings.database_url == url
    assert "pg-secret-pass" not in repr(settings)


def test_an_unknown_database_url_is_named_without_echoing_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("VEO_DATABASE_URL", "mysql://veo:pg-secret-pass@db/veo")
    with pytest.raises(SettingsError, match="VEO_DATABASE_URL") as info:
        load_settings(None)
    assert "postgresql://" in str(info.value)  # says what would work
    assert "pg-secret-pass" not in str(info.value)


def test_missing_token_is_one_clear_line() -> None:
    with pytest.raises(SettingsError, match="DISCORD_TOKEN is missing"):
        require_discord_token(load_settings(None))


def _run_bot(env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    clean = {
        k: v for k, v in os.environ.items() if not k.startswith(("DISCORD_", "SEGMIND_", "VEO_"))
    }
    return subprocess.run(
        [sys.executable, "-m", "bot"],
        env={**clean, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_bot_without_token_exits_with_one_line_and_no_traceback(tmp_path: Path) -> None:
    result = _run_bot({"PYTHONPATH": str(ROOT)}, tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert "DISCORD_TOKEN" in result.stderr
    assert "Traceback" not in result.stderr


def test_bot_with_malformed_setting_names_it(tmp_path: Path) -> None:
    result = _run_bot(
        {"PYTHONPATH": str(ROOT), "DISCORD_TOKEN": "x" * 60, "VEO_MAX_CONCURRENT_JOBS": "0"},
        tmp_path,
    )
    assert result.returncode == 2
    assert "VEO_MAX_CONCURRENT_JOBS" in result.stderr
    assert "Traceback" not in result.stderr


def test_history_url_defaults_to_the_sdk_address_and_can_point_at_a_fake(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert load_settings(None).segmind_history_url == (
        "https://api.spotprod.segmind.com/inference-request/request-history"
    )
    monkeypatch.setenv(
        "SEGMIND_HISTORY_URL", "http://127.0.0.1:8765/inference-request/request-history/"
    )
    assert load_settings(None).segmind_history_url == (
        "http://127.0.0.1:8765/inference-request/request-history"
    )
