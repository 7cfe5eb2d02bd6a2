"""The layering a reader relies on: the core imports no Discord, and no module imports itself
back through others."""

from __future__ import annotations

import subprocess
import sys

import pytest

# The money core and everything it stands on: usable from the CLI, tests and other front ends.
DISCORD_FREE = (
    "bot.jobs",
    "bot.progress",
    "bot.store",
    "bot.segmind.client",
    "bot.params",
    "bot.quota",
)


@pytest.mark.parametrize("module", DISCORD_FREE)
def test_core_module_loads_no_discord(module: str) -> None:
    code = (
        f"import {module}, sys; "
        "leaked = sorted(m for m in sys.modules if m == 'discord' or m.startswith('discord.')); "
        "assert not leaked, leaked"
    )
    # A fresh interpreter: this test process has long imported discord.
    done = subprocess.run(  # noqa: S603
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
