"""Settings, read from the environment and `.env` by `load_settings()` — never at import time."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from bot.database_url import backend_of, sqlite_url
from bot.media.images import DEFAULT_IMAGE_HOSTS
from bot.params import Aspect, Duration, Fps, Resolution
from bot.pricing import PUBLISHED_MAX
from bot.segmind.history import DEFAULT_HISTORY_URL
from bot.shards import MAX_SHARDS, ShardPlan, ShardSpecError, parse_shard_ids

DISCORD_API_BASE_URL = "https://discord.com/api/v10"
DISCORD_GATEWAY_URL = "wss://gateway.discord.gg/"
# What the Discord token or the Segmind key becomes wherever it would otherwise be shown:
# log lines, tracebacks, the client's repr and its error texts.
MASK = "[redacted]"

LogFormat = Literal["text", "json"]


class SettingsError(Exception):
    """A setting is missing or malformed. `str()` is one line naming it."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
        hide_input_in_errors=True,
        # A blank line in .env (`SEGMIND_API_KEY=`) means "not set", not "set to nothing".
        env_ignore_empty=True,
    )

    # Discord
    discord_token: SecretStr | None = None
    discord_api_base_url: str = DISCORD_API_BASE_URL
    discord_gateway_url: str = DISCORD_GATEWAY_URL
    discord_dev_guild_id: int | None = None
    discord_message_content_intent: bool = False
    # Sharding (unset: one gateway connection, as a bot in fewer than 2,500 guilds needs).
    # DISCORD_SHARD_IDS (`0-3`, `0,2`) splits DISCORD_SHARD_COUNT shards between nodes; without
    # it a node with a count runs all of them.
    discord_shard_count: int | None = Field(default=None, ge=1, le=MAX_SHARDS)
    discord_shard_ids: Annotated[tuple[int, ...] | None, NoDecode] = None

    # Segmind
    segmind_api_key: SecretStr | None = None
    segmind_base_url: str = "https://api.segmind.com"
    # Segmind's record of every request and its cost, on another host than the API itself.
    segmind_history_url: str = DEFAULT_HISTORY_URL
    segmind_max_rpm: int = Field(default=50, ge=1, le=10_000)
    segmind_timeout: float = Field(default=30.0, gt=0)
    veo_demo_seconds: float = Field(default=20.0, ge=0)

    # Storage. The URL wins; without one the SQLite file at VEO_DB_PATH is the database.
    # A secret: a postgresql:// URL may carry the password.
    veo_database_url: SecretStr | None = None
    veo_db_path: Path = Path("data/veo.sqlite3")
    veo_work_dir: Path = Path("data/work")

    # /veo defaults
    veo_default_aspect: Aspect = Aspect.WIDE
    # Plain ints checked below: a Literal would refuse the string "8" that the environment gives.
    veo_default_duration: int = 8
    veo_default_fps: int = 24
    veo_default_resolution: Resolution = Resolution.HD
    veo_default_audio: bool = True

    # Polling (seconds). The schedule adapts between floor and ceiling; the deadline is hard.
    veo_poll_floor: float = Field(default=1.5, gt=0)
    veo_poll_ceiling: float = Field(default=20.0, gt=0)
    veo_job_deadline: float = Field(default=1800.0, gt=0)

    # One runner per Segmind key (several nodes on one database): the lease's term in seconds
    # (renewed every third of it; a standby takes over within it after the runner dies), and
    # how often the runner reads the queue for jobs other nodes took in.
    veo_runner_lease_seconds: float = Field(default=15.0, gt=0)
    veo_queue_poll_seconds: float = Field(default=1.0, gt=0)

    # Discord presentation
    veo_edit_interval: float = Field(default=5.0, ge=0)
    veo_mention_on_ready: bool = True

    # Limits
    veo_user_limit: int = Field(default=3, ge=0)
    veo_user_window_hours: float = Field(default=24.0, gt=0)
    veo_user_concurrency: int = Field(default=1, ge=1)
    veo_guild_daily_limit: int | None = Field(default=None, ge=0)
    veo_global_daily_limit: int | None = Field(default=None, ge=0)
    # The owner's spend caps: rolling 24 h, and per calendar month UTC (1st 00:00 to 1st).
    veo_daily_spend_cap: float | None = Field(default=None, ge=0)
    veo_monthly_spend_cap: float | None = Field(default=None, ge=0)
    # The most a moderator may set as a guild's monthly budget (and the budget of a guild that
    # set none); None: no per-guild maximum beyond the monthly cap.
    veo_guild_monthly_budget_max: float | None = Field(default=None, ge=0)
    # The quote of options never billed yet: the top of Segmind's published range, so a cap
    # trips before the owner is overspent; learned quotes replace it (`bot.pricing`).
    veo_price_per_job: float = Field(default=PUBLISHED_MAX, gt=0)
    veo_blocked_prompt_cap: int = Field(default=3, ge=0)
    # Balance watch: how often the Segmind balance is read (one request of the shared budget
    # each time), and how many videos' worth left makes the log channels hear of it (0 = only
    # when it runs out).
    veo_balance_check_seconds: float = Field(default=600.0, gt=0)
    veo_balance_warn_videos: int = Field(default=25, ge=0)
    veo_max_concurrent_jobs: int = Field(default=4, ge=1)
    # The approval lane (/veo-admin approvals): how long a held request waits for a moderator
    # when the guild set no time of its own, and how often lapsed ones are looked for.
    veo_approval_expiry_hours: float = Field(default=24.0, gt=0)
    veo_approval_sweep_seconds: float = Field(default=30.0, gt=0)
    veo_max_image_bytes: int = Field(default=20 * 1024 * 1024, gt=0)
    # Hosts input images may be fetched from (comma-separated in the environment): Discord's.
    veo_image_hosts: Annotated[tuple[str, ...], NoDecode] = DEFAULT_IMAGE_HOSTS
    veo_max_video_bytes: int = Field(default=500 * 1024 * 1024, gt=0)
    # Seconds the whole download of a finished video may take (retries included).
    veo_download_timeout: float = Field(default=300.0, gt=0)

    # Money truth. A submit whose answer was lost is looked for in Segmind's request history
    # for this long after it began (its row lands a little after the request), every
    # VEO_RECOVERY_INTERVAL_SECONDS; past it, with no match, the member is refunded.
    veo_recovery_window_seconds: float = Field(default=300.0, ge=0)
    veo_recovery_interval_seconds: float = Field(default=15.0, gt=0)
    # How often the history is paged to record what Segmind billed and flag disagreements.
    veo_reconcile_interval_seconds: float = Field(default=900.0, gt=0)

    # Operations: health checks and metrics over HTTP (off unless a port is set; 0 = any free
    # port, logged), and the log format a log shipper reads.
    veo_http_port: int | None = Field(default=None, ge=0, le=65535)
    veo_http_host: str = "127.0.0.1"
    veo_log_format: LogFormat = "text"

    @field_validator(
        "segmind_base_url", "segmind_history_url", "discord_api_base_url", "discord_gateway_url"
    )
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        return value.rstrip("/") if not value.endswith("://") else value

    @field_validator("veo_image_hosts", mode="before")
    @classmethod
    def _host_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.split(",")
        if isinstance(value, list | tuple):
            hosts = tuple(str(h).strip().rstrip(".").lower() for h in value if str(h).strip())
            if not hosts:
                raise ValueError("needs at least one host")
            if any(not _bare_host(h) for h in hosts):
                raise ValueError("list host names only, without scheme, port or path")
            return hosts
        return value

    @field_validator("discord_shard_ids", mode="before")
    @classmethod
    def _shard_ids(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                return parse_shard_ids(value)
            except ShardSpecError as exc:
                raise ValueError(str(exc)) from None
        return value

    @model_validator(mode="after")
    def _shards_fit_the_count(self) -> Settings:
        if self.discord_shard_ids is not None and self.discord_shard_count is None:
            raise ValueError("DISCORD_SHARD_IDS needs DISCORD_SHARD_COUNT (the total shards)")
        try:
            self.shard_plan  # noqa: B018  # built here so a bad pair stops start-up
        except ShardSpecError as exc:
            raise ValueError(f"DISCORD_SHARD_IDS: {exc}") from None
        return self

    @field_validator("veo_database_url")
    @classmethod
    def _known_database(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            backend_of(value.get_secret_value())  # its ValueError names the schemes
        return value

    @field_validator("veo_default_duration")
    @classmethod
    def _known_duration(cls, value: int) -> int:
        if value not in get_args(Duration):
            raise ValueError("must be 4, 6 or 8")
        return value

    @field_validator("veo_default_fps")
    @classmethod
    def _known_fps(cls, value: int) -> int:
        if value not in get_args(Fps):
            raise ValueError("must be 24 or 30")
        return value

    @field_validator("veo_poll_ceiling")
    @classmethod
    def _ceiling_over_floor(cls, value: float, info: Any) -> float:
        floor = info.data.get("veo_poll_floor")
        if floor is not None and value < floor:
            raise ValueError("must be at least VEO_POLL_FLOOR")
        return value

    @property
    def database_url(self) -> str:
        """Where the store lives: VEO_DATABASE_URL, else the SQLite file at VEO_DB_PATH."""
        if self.veo_database_url is not None:
            return self.veo_database_url.get_secret_value()
        return sqlite_url(self.veo_db_path)

    @property
    def shard_plan(self) -> ShardPlan | None:
        """The shards this node runs; None when sharding is not configured (one connection)."""
        if self.discord_shard_count is None:
            return None
        ids = self.discord_shard_ids or tuple(range(self.discord_shard_count))
        return ShardPlan(self.discord_shard_count, ids)

    @property
    def demo_mode(self) -> bool:
        """No Segmind key: the built-in fake serves test clips and nothing is billed."""
        return self.segmind_api_key is None or not self.segmind_api_key.get_secret_value()


def _bare_host(host: str) -> bool:
    """A host name or address alone: no scheme, port or path (an IPv6 address has colons)."""
    if "/" in host:
        return False
    if ":" not in host:
        return True
    try:
        ipaddress.IPv6Address(host.strip("[]"))
    except ValueError:
        return False
    return True


def load_settings(env_file: str | Path | None = ".env", **overrides: Any) -> Settings:
    """Build the settings; a bad value raises `SettingsError` with one line naming it."""
    try:
        return Settings(_env_file=env_file, **overrides)  # type: ignore[call-arg]
    except ValidationError as exc:
        first = exc.errors()[0]
        reason = first.get("msg", "invalid value")
        count = exc.error_count()
        more = f" (and {count - 1} more)" if count > 1 else ""
        if not first.get("loc"):  # a rule across settings: the reason names them
            raise SettingsError(f"settings are invalid: {reason}{more}") from None
        name = str(first["loc"][0]).upper()
        raise SettingsError(f"setting {name} is invalid: {reason}{more}") from None


def require_discord_token(settings: Settings) -> str:
    if settings.discord_token is None or not settings.discord_token.get_secret_value().strip():
        raise SettingsError("setting DISCORD_TOKEN is missing: put your bot token in .env")
    return settings.discord_token.get_secret_value().strip()
