"""`python -m bot [run|generate|check|fake-segmind]` — with no arguments, runs the bot."""

from __future__ import annotations

import sys

USAGE = """usage: python -m bot [COMMAND] [ARGS...]

commands:
  run            run the Discord bot (the default when no command is given)
  generate       make one video from a prompt, without Discord (`generate --help` for options)
  check          check the settings and that Segmind answers (credits)
  fake-segmind   serve a fake Segmind API for tests and demos (`fake-segmind --help`)

Settings come from the environment and .env (see .env.example)."""
HELP_FLAGS = ("-h", "--help", "help")


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in HELP_FLAGS:
        print(USAGE)
        return 0
    command = args.pop(0) if args and not args[0].startswith("-") else "run"
    if command == "run":
        from bot.chat.runner import main_run

        return main_run(args)
    if command == "generate":
        from bot.cli import main_generate

        return main_generate(args)
    if command == "check":
        from bot.cli import main_check

        return main_check(args)
    if command == "fake-segmind":
        from bot.segmind.fake import run_cli

        return run_cli(args)
    print(
        f"unknown command {command!r}: use run (default), generate, check or fake-segmind "
        "(python -m bot --help)",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(main())
