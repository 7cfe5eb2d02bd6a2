"""Test support shared by `tests/` and `bench/`, never shipped with the bot: a Discord emulator
the real discord.py client logs in to (`discord_emulator`), the bot run as a real process
against it (`bot_process`), and clocks a test or simulation moves by hand (`clocks`)."""
