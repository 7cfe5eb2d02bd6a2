"""Entry point for `python -m bot.fake_segmind`."""

import sys

from bot.fake_segmind.cli import main

sys.exit(main())
