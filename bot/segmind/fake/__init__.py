"""A fake Segmind (Veo 3 Fast, v2 async API) for tests and the bot's demo mode.

    async with FakeSegmind(api_key="fake-key") as fake:
        ...  # point a client at fake.base_url

Scenarios are steered with `fake.inject(route, Fault(...))`, `[fake:...]` prompt tokens and an
injectable clock; see README.md beside this file.
"""

from bot.segmind.fake.cli import main as run_cli
from bot.segmind.fake.faults import ROUTES, Fault
from bot.segmind.fake.jobs import JobState, parse_magic, price
from bot.segmind.fake.server import DEMO_KEY, FakeSegmind, RecordedRequest
from bot.segmind.fake.video import probe

__all__ = [
    "DEMO_KEY",
    "ROUTES",
    "FakeSegmind",
    "Fault",
    "JobState",
    "RecordedRequest",
    "parse_magic",
    "price",
    "probe",
    "run_cli",
]
