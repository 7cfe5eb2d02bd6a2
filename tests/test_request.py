"""One request type, resolved once: what a member did not choose comes from the server's
settings, the aspect follows the image, and the bot picks the seed."""

from __future__ import annotations

import pytest

from bot.config import Settings, load_settings
from bot.params import SEED_MAX, Aspect, InvalidParams, Resolution
from bot.request import ImageSource, VeoRequest, resolve_params


@pytest.fixture
def settings() -> Settings:
    return load_settings(
        env_file=None,
        veo_default_aspect="9:16",
        veo_default_duration=6,
        veo_default_fps=30,
        veo_default_resolution="1080p",
        veo_default_audio=False,
    )


def test_unchosen_options_take_the_servers_defaults(settings: Settings) -> None:
    params = resolve_params(VeoRequest(prompt="a fox"), settings)
    assert params.aspect_ratio is Aspect.VERTICAL
    assert (params.duration, params.fps) == (6, 30)
    assert params.resolution is Resolution.FULL_HD
    assert params.generate_audio is False
    assert params.image_url is None


def test_chosen_options_win(settings: Settings) -> None:
    request = VeoRequest(
        prompt="a fox",
        aspect=Aspect.SQUARE,
        duration=4,
        fps=24,
        resolution=Resolution.HD,
        audio=True,
        seed=42,
    )
    params = resolve_params(request, settings, image_aspect=Aspect.WIDE)
    assert params.aspect_ratio is Aspect.SQUARE  # chosen beats the image's shape
    assert (params.duration, params.fps, params.resolution) == (4, 24, Resolution.HD)
    assert params.generate_audio is True
    assert params.seed == 42


def test_the_aspect_follows_the_image_when_not_chosen(settings: Settings) -> None:
    request = VeoRequest(prompt="waves", image=ImageSource("https://cdn.example/a.png"))
    params = resolve_params(request, settings, image_aspect=Aspect.CLASSIC)
    assert params.aspect_ratio is Aspect.CLASSIC
    assert params.image_url == "https://cdn.example/a.png"
    # An image whose shape is unknown leaves the server's default.
    assert resolve_params(request, settings).aspect_ratio is Aspect.VERTICAL


@pytest.mark.parametrize("seed", [None, 0])
def test_the_bot_picks_a_seed_it_can_show(settings: Settings, seed: int | None) -> None:
    seeds = {resolve_params(VeoRequest("a fox", seed=seed), settings).seed for _ in range(5)}
    assert all(1 <= s <= SEED_MAX for s in seeds)
    assert len(seeds) > 1


def test_again_keeps_every_option_but_the_seed(settings: Settings) -> None:
    first = resolve_params(
        VeoRequest(
            "a fox",
            aspect=Aspect.SQUARE,
            audio=True,
            image=ImageSource("https://cdn.example/a.png"),
        ),
        settings,
    )
    again = resolve_params(VeoRequest.again(first), settings, image_aspect=Aspect.WIDE)
    assert again.model_dump(exclude={"seed"}) == first.model_dump(exclude={"seed"})
    assert again.seed != first.seed
    edited = resolve_params(VeoRequest.again(first, "a wolf"), settings)
    assert edited.prompt == "a wolf"
    assert edited.aspect_ratio is Aspect.SQUARE


def test_out_of_range_values_are_refused_with_a_sentence(settings: Settings) -> None:
    with pytest.raises(InvalidParams) as info:
        resolve_params(VeoRequest("a fox", seed=SEED_MAX + 1), settings)
    assert str(SEED_MAX) in info.value.user_message
    with pytest.raises(InvalidParams) as info:
        resolve_params(VeoRequest("   "), settings)
    assert "prompt is empty" in info.value.user_message
