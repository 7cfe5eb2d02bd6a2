"""Which gateway shards this process runs, and Discord's rules for starting them.

Discord splits a bot's guilds over `shard_count` gateway connections: guild `g` lives on shard
`(g >> 22) % shard_count`, DMs on shard 0. Several processes ("nodes") may split the shards
between them (`DISCORD_SHARD_IDS`); each runs discord.py's auto-sharded client over its own.

Starting a session (IDENTIFY) is rate limited per bucket: shard `s` is in bucket
`s % max_concurrency` (`max_concurrency` comes from `GET /gateway/bot`), and each bucket may
start one session per 5 seconds across *every* process of the bot — hence a claim in the shared
database (`Store.claim_identify_slot`), not a local sleep.

Pure: no Discord, no database.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Discord: "one IDENTIFY per bucket per 5 seconds" (Gateway › Sharding › Max Concurrency).
IDENTIFY_SPACING = 5.0
# What a node claims per IDENTIFY: the slot is claimed before the websocket connects and
# Discord's HELLO arrives, and that takes a different time on every connection, so two
# IDENTIFYs claimed exactly 5 s apart can reach Discord closer than that (seen under load as
# an op 9). A second of margin absorbs that jitter.
IDENTIFY_CLAIM_SPACING = IDENTIFY_SPACING + 1.0
# A shard count this large is a typo, not a bot (Discord's largest bots run tens of thousands).
MAX_SHARDS = 1 << 16

_RANGE = re.compile(r"^(\d+)(?:-(\d+))?$")


class ShardSpecError(ValueError):
    """`DISCORD_SHARD_IDS` cannot be read; `str()` says which part and why."""


def shard_for_guild(guild_id: int | None, shard_count: int) -> int:
    """The shard a guild's events arrive on (DMs, `None`, on shard 0)."""
    if guild_id is None:
        return 0
    return (guild_id >> 22) % shard_count


def identify_bucket(shard_id: int, max_concurrency: int) -> int:
    """The session-start bucket of a shard: at most one IDENTIFY per bucket per 5 s."""
    return shard_id % max(1, max_concurrency)


def parse_shard_ids(text: str) -> tuple[int, ...]:
    """`"0-3"`, `"0,2"`, `"0-1,4"` → sorted distinct ids. Strict: every part is a number or an
    ascending range of numbers; anything else (blank parts, signs, `3-1`) is refused."""
    ids: set[int] = set()
    parts = [part.strip() for part in text.split(",")]
    if not text.strip():
        raise ShardSpecError("is empty: list shard ids such as 0-3 or 0,2")
    for part in parts:
        match = _RANGE.fullmatch(part)
        if match is None:
            raise ShardSpecError(f"{part!r} is not a shard id or a range such as 0-3")
        first = int(match[1])
        last = int(match[2]) if match[2] is not None else first
        if last < first:
            raise ShardSpecError(f"range {part!r} runs backwards")
        if last >= MAX_SHARDS:
            raise ShardSpecError(f"{part!r} names a shard past {MAX_SHARDS - 1}")
        duplicated = ids.intersection(range(first, last + 1))
        if duplicated:
            raise ShardSpecError(f"shard {min(duplicated)} is listed twice")
        ids.update(range(first, last + 1))
    return tuple(sorted(ids))


@dataclass(frozen=True, slots=True)
class ShardPlan:
    """The shards this process runs out of `count`."""

    count: int
    ids: tuple[int, ...]

    def __post_init__(self) -> None:
        if not 1 <= self.count <= MAX_SHARDS:
            raise ShardSpecError(f"the shard count must be 1 to {MAX_SHARDS}, not {self.count}")
        if not self.ids:
            raise ShardSpecError("no shard ids")
        outside = [i for i in self.ids if not 0 <= i < self.count]
        if outside:
            raise ShardSpecError(
                f"shard {outside[0]} is not below the shard count {self.count} "
                f"(ids run 0 to {self.count - 1})"
            )

    @property
    def syncs_commands(self) -> bool:
        """Only the node running shard 0 syncs the slash commands: one writer, not N racing
        PUTs of the same definitions on every deploy."""
        return 0 in self.ids

    def describe(self) -> str:
        return f"shards {','.join(map(str, self.ids))} of {self.count}"
