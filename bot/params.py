"""The Veo 3 Fast request parameters, mirroring Segmind's model page exactly.

One model serves the Segmind client (nothing invalid reaches the network), the Segmind fake
(which must refuse what the real service refuses), the CLI and the Discord cog (which turns a
validation error into a message naming the option and its allowed values).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal, get_args
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

MODEL_SLUG = "veo-3-fast"
PROMPT_MAX_CHARS = 4000  # Veo accepts about 1,024 tokens; 4,000 characters stays well inside it.
SEED_MAX = 2**32 - 1  # Segmind's seed is an unsigned 32-bit integer; 0 lets it pick


class Aspect(StrEnum):
    WIDE = "16:9"
    CLASSIC = "4:3"
    SQUARE = "1:1"
    PORTRAIT_CLASSIC = "3:4"
    VERTICAL = "9:16"

    @property
    def ratio(self) -> float:
        width, height = self.value.split(":")
        return int(width) / int(height)


class Resolution(StrEnum):
    HD = "720p"
    FULL_HD = "1080p"


Duration = Literal[4, 6, 8]
Fps = Literal[24, 30]
DURATIONS: tuple[int, ...] = get_args(Duration)
FPS_VALUES: tuple[int, ...] = get_args(Fps)

ALLOWED_VALUES: dict[str, tuple[str, ...]] = {
    "aspect_ratio": tuple(a.value for a in Aspect),
    "duration": tuple(str(d) for d in DURATIONS),
    "fps": tuple(str(f) for f in FPS_VALUES),
    "resolution": tuple(r.value for r in Resolution),
}


class VeoParams(BaseModel):
    """The body of `POST /v2/veo-3-fast`. Field names are Segmind's own."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_enum_values=False)

    prompt: str = Field(min_length=1, max_length=PROMPT_MAX_CHARS)
    aspect_ratio: Aspect = Aspect.WIDE
    duration: Duration = 8
    fps: Fps = 24
    resolution: Resolution = Resolution.HD
    generate_audio: bool = False
    seed: int = Field(default=0, ge=0, le=SEED_MAX)
    image_url: str | None = None

    @field_validator("prompt")
    @classmethod
    def _prompt_not_blank(cls, value: str) -> str:
        stripped = value.strip()
        if not stripped:
            raise ValueError("the prompt is empty")
        return stripped

    @field_validator("image_url")
    @classmethod
    def _image_url_is_http(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("image_url must be an http(s) URL")
        return value

    def to_body(self) -> dict[str, Any]:
        """The JSON body Segmind expects; `image_url` only when set."""
        body = self.model_dump(mode="json", exclude_none=True)
        return body


class InvalidParams(ValueError):
    """A parameter is outside what Veo accepts. `field` is Segmind's field name."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.user_message = message


def describe_error(error: ValidationError) -> InvalidParams:
    """Turn pydantic's first complaint into a sentence a Discord user can act on."""
    first = error.errors()[0]
    loc = first.get("loc") or ("request",)
    field = str(loc[0])
    allowed = ALLOWED_VALUES.get(field)
    if allowed:
        message = f"`{field}` must be one of: {', '.join(allowed)}."
    elif field == "prompt":
        if first.get("type") == "string_too_long":
            message = f"The prompt is too long (at most {PROMPT_MAX_CHARS} characters)."
        else:
            message = "The prompt is empty — describe the video you want."
    elif field == "seed":
        message = f"`seed` must be a whole number from 0 to {SEED_MAX} (0 picks one at random)."
    elif field == "image_url":
        message = "`image_url` must be an http(s) URL."
    elif first.get("type") == "extra_forbidden":
        message = f"`{field}` is not a Veo 3 Fast parameter."
    else:
        message = f"`{field}`: {first.get('msg', 'invalid value')}."
    return InvalidParams(field, message)


def parse_params(data: dict[str, Any]) -> VeoParams:
    """Validate a raw dict; raise `InvalidParams` with a user-facing message."""
    try:
        return VeoParams.model_validate(data)
    except ValidationError as exc:
        raise describe_error(exc) from None
