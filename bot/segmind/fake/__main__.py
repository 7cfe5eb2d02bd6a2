"""Entry point for `python -m bot.segmind.fake`."""

import sys

from bot.segmind.fake.cli import main

sys.exit(main())
