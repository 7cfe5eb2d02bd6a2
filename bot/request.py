"""A member's `/veo` request as typed data, and the one rule that turns it into `VeoParams`.

Every entry point — `/veo`, the "Animate with Veo" menu, `@Veo` mentions, the Again / Edit
prompt buttons and the CLI — builds a `VeoRequest` whose options are None when the member did
not choose them; `resolve_params` fills them the same way for all. No Discord here, so the CLI
uses it too.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import TypeVar

from bot.config import Settings
from bot.params import SEED_MAX, Aspect, Resolution, VeoParams, parse_params

T = TypeVar("T")


@dataclass(frozen=True)
class ImageSource:
    """An image a member pointed at, with what Discord told us about it (if anything)."""

    url: str
    content_type: str | None = None
    size: int | None = None


@dataclass(frozen=True)
class VeoRequest:
    """What was asked for. None: not chosen — the server's default (or the image) decides."""

    prompt: str
    aspect: Aspect | None = None
    duration: int | None = None
    fps: int | None = None
    resolution: Resolution | None = None
    audio: bool | None = None
    seed: int | None = None  # None or 0: the bot picks one
    image: ImageSource | None = None

    @classmethod
    def again(cls, params: VeoParams, prompt: str | None = None) -> VeoRequest:
        """A new request like an earlier job's: every option kept, a fresh seed, maybe a new
        prompt."""
        return cls(
            prompt=params.prompt if prompt is None else prompt,
            aspect=params.aspect_ratio,
            duration=params.duration,
            fps=params.fps,
            resolution=params.resolution,
            audio=params.generate_audio,
            image=ImageSource(params.image_url) if params.image_url else None,
        )


def pick_seed() -> int:
    """A random non-zero seed: chosen by the bot so the final message can say which one made
    the video (0 would let Segmind choose, unseen)."""
    return secrets.randbelow(SEED_MAX) + 1


def resolve_params(
    request: VeoRequest, settings: Settings, *, image_aspect: Aspect | None = None
) -> VeoParams:
    """The parameters to send: options not chosen take the server's defaults, except the aspect,
    which follows the image (`image_aspect`, its closest ratio) when there is one. Raises
    `InvalidParams` with a sentence for the member."""
    aspect = _chosen(request.aspect, image_aspect or settings.veo_default_aspect)
    return parse_params(
        {
            "prompt": request.prompt,
            "aspect_ratio": aspect.value,
            "duration": _chosen(request.duration, settings.veo_default_duration),
            "fps": _chosen(request.fps, settings.veo_default_fps),
            "resolution": _chosen(request.resolution, settings.veo_default_resolution).value,
            "generate_audio": _chosen(request.audio, settings.veo_default_audio),
            "seed": request.seed or pick_seed(),
            "image_url": request.image.url if request.image else None,
        }
    )


def _chosen(value: T | None, default: T) -> T:
    return default if value is None else value
