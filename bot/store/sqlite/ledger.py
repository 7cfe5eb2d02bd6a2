"""The quota ledger on SQLite: check-and-reserve in one `BEGIN IMMEDIATE` transaction, then
settle each reservation as charged or released.

`reserve()` inserts the job (`queued`) and a `reserved` ledger row atomically; `charge()` settles
it as `charged` once delivered, `release()` as `released` (refunded) when the user got no video.
Reserved and charged rows count toward every limit; released ones do not.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from functools import partial
from typing import Any, cast

from bot.quota import (
    DAY_SECONDS,
    Block,
    EffectiveLimits,
    GuildLimits,
    LimitDefaults,
    LimitOverride,
    Refusal,
    UsageSnapshot,
    WindowUsage,
    blocked_refund_allowed,
    decide,
    effective_limits,
)
from bot.store.model import (
    NONTERMINAL_STATES,
    TERMINAL_STATES,
    QuotaView,
    ReleaseOutcome,
    ReleaseReason,
    Reserved,
    ReserveRequest,
)
from bot.store.sqlite.connection import SqliteBase, _placeholders


def _load_limits(
    conn: sqlite3.Connection,
    guild_id: int,
    user_id: int,
    role_ids: Iterable[int],
    defaults: LimitDefaults,
) -> tuple[EffectiveLimits, Block | None, float | None]:
    """The member's effective limits, their block (if any) and their last window reset."""
    row = conn.execute(
        """
        SELECT g.user_limit, g.window_hours, g.concurrency, g.daily_limit, g.spend_cap,
               u.user_id, u.user_limit, u.window_hours, u.concurrency,
               b.user_id, b.reason, b.blocked_by, b.created_at,
               r.reset_at
        FROM (SELECT 1)
        LEFT JOIN guild_settings g ON g.guild_id = :guild
        LEFT JOIN user_overrides u ON u.guild_id = :guild AND u.user_id = :user
        LEFT JOIN blocks b ON b.guild_id = :guild AND b.user_id = :user
        LEFT JOIN window_resets r ON r.guild_id = :guild AND r.user_id = :user
        """,
        {"guild": guild_id, "user": user_id},
    ).fetchone()
    guild = GuildLimits(*row[0:5])
    user_override = LimitOverride(*row[6:9]) if row[5] is not None else None
    block = (
        Block(guild_id, user_id, reason=row[10], blocked_by=row[11], created_at=row[12])
        if row[9] is not None
        else None
    )
    reset_at: float | None = row[13]

    roles = sorted(set(role_ids))
    role_overrides: dict[int, LimitOverride] = {}
    exempt: set[int] = set()
    if roles:
        marks = _placeholders(len(roles))
        for role_id, limit, hours, conc, is_exempt in conn.execute(
            "SELECT role_id, user_limit, window_hours, concurrency, 0 FROM role_overrides "  # noqa: S608  # only "?" marks are formatted in
            f"WHERE guild_id = ? AND role_id IN ({marks}) "
            "UNION ALL SELECT role_id, NULL, NULL, NULL, 1 FROM exempt_roles "
            f"WHERE guild_id = ? AND role_id IN ({marks})",
            (guild_id, *roles, guild_id, *roles),
        ):
            if is_exempt:
                exempt.add(role_id)
            else:
                role_overrides[role_id] = LimitOverride(limit, hours, conc)
    limits = effective_limits(defaults, guild, role_overrides, roles, exempt, user_override)
    return limits, block, reset_at


# Counting rows of the ledger inside a window, for one user, one guild or everyone. The WHERE
# clauses are fixed strings; every value is a parameter.
_WINDOW_SCOPES = {
    "user": "guild_id = ? AND user_id = ? AND reserved_at > ? AND status != 'released'",
    "guild": "guild_id = ? AND reserved_at > ? AND status != 'released'",
    "global": "reserved_at > ? AND status != 'released'",
}


def _pivot(
    conn: sqlite3.Connection, scope: str, params: tuple[Any, ...], count: int, limit: int | None
) -> WindowUsage:
    """A window of `count` rows; when it is full, also read the one row whose expiry frees a
    slot (the limit-th newest) — the only timestamp a refusal needs."""
    pivot = None
    if limit and count >= limit:
        pivot = conn.execute(
            f"SELECT reserved_at FROM quota_ledger WHERE {_WINDOW_SCOPES[scope]} "  # noqa: S608
            "ORDER BY reserved_at DESC LIMIT 1 OFFSET ?",
            (*params, limit - 1),
        ).fetchone()[0]
    return WindowUsage(int(count), pivot)


def _window(
    conn: sqlite3.Connection, scope: str, params: tuple[Any, ...], limit: int | None
) -> WindowUsage:
    (count,) = conn.execute(
        f"SELECT COUNT(*) FROM quota_ledger WHERE {_WINDOW_SCOPES[scope]}",  # noqa: S608
        params,
    ).fetchone()
    return _pivot(conn, scope, params, count, limit)


# One pass over the day's counting rows of a scope (a covering index each) gives both caps'
# inputs: how many and how much. A reservation counts at its estimate until charged.
_DAY_TOTALS = """
    SELECT COUNT(*),
           COALESCE(SUM(guild_id = :guild), 0),
           COALESCE(SUM(CASE status WHEN 'charged' THEN COALESCE(charged_amount, amount)
                                    ELSE amount END), 0),
           COALESCE(SUM(CASE WHEN guild_id = :guild THEN
                            CASE status WHEN 'charged' THEN COALESCE(charged_amount, amount)
                                        ELSE amount END END), 0)
    FROM quota_ledger
    WHERE {where} AND reserved_at > :since AND status != 'released'
"""
_DAY_TOTALS_GLOBAL = _DAY_TOTALS.format(where="1")
_DAY_TOTALS_GUILD = _DAY_TOTALS.format(where="guild_id = :guild")


def _snapshot(
    conn: sqlite3.Connection,
    guild_id: int,
    user_id: int,
    limits: EffectiveLimits,
    block: Block | None,
    reset_at: float | None,
    now: float,
) -> UsageSnapshot:
    """Everything `decide` needs, read inside the caller's transaction."""
    if block is not None:
        return UsageSnapshot(block=block)  # nothing else matters; spare the queries
    window_start = now - limits.window_seconds
    if reset_at is not None:
        window_start = max(window_start, reset_at)
    day_start = now - DAY_SECONDS
    # `concurrency` rows are enough to refuse; never read more, whatever piled up.
    in_flight = tuple(
        r[0]
        for r in conn.execute(
            "SELECT id FROM jobs WHERE user_id = ? AND state IN "  # noqa: S608  # only "?" marks
            f"({_placeholders(len(NONTERMINAL_STATES))}) ORDER BY queue_seq LIMIT ?",
            (user_id, *NONTERMINAL_STATES, limits.concurrency),
        )
    )
    user_window = _window(conn, "user", (guild_id, user_id, window_start), limits.user_limit)
    global_count = guild_count = 0
    global_spend = guild_spend = 0.0
    if limits.global_daily_limit is not None or limits.global_spend_cap is not None:
        global_count, guild_count, global_spend, guild_spend = conn.execute(
            _DAY_TOTALS_GLOBAL, {"guild": guild_id, "since": day_start}
        ).fetchone()
    elif limits.guild_daily_limit is not None or limits.guild_spend_cap is not None:
        # Only this guild's caps apply: scan this guild's rows, not everyone's.
        _, guild_count, _, guild_spend = conn.execute(
            _DAY_TOTALS_GUILD, {"guild": guild_id, "since": day_start}
        ).fetchone()
    guild_day = _pivot(conn, "guild", (guild_id, day_start), guild_count, limits.guild_daily_limit)
    global_day = _pivot(conn, "global", (day_start,), global_count, limits.global_daily_limit)
    return UsageSnapshot(
        block=None,
        in_flight_job_ids=in_flight,
        user_window=user_window,
        guild_day=guild_day,
        global_day=global_day,
        guild_spend=float(guild_spend),
        global_spend=float(global_spend),
    )


def _reserve(
    conn: sqlite3.Connection, request: ReserveRequest, defaults: LimitDefaults, now: float
) -> Reserved | Refusal:
    if request.event_id is not None:
        # Before any limit: the first delivery of this event holds the member's slot, and its
        # twin must find that job, not be refused for it.
        known = conn.execute(
            "SELECT id, queue_seq FROM jobs WHERE event_id = ?", (request.event_id,)
        ).fetchone()
        if known is not None:
            return Reserved(
                job_id=int(known[0]), queue_seq=int(known[1]), used=0, limit=None, existing=True
            )
    limits, block, reset_at = _load_limits(
        conn, request.guild_id, request.user_id, request.role_ids, defaults
    )
    usage = _snapshot(conn, request.guild_id, request.user_id, limits, block, reset_at, now)
    decision = decide(limits, usage, now)
    if isinstance(decision, Refusal):
        return decision  # nothing was written; the commit is empty
    job_id, queue_seq = conn.execute(
        """
        INSERT INTO jobs (guild_id, channel_id, user_id, prompt, params, image_url,
                          state, created_at, updated_at, queue_seq,
                          interaction_token, interaction_created_at,
                          placeholder_channel_id, placeholder_message_id, upload_limit,
                          event_id)
        VALUES (?, ?, ?, ?, ?, ?, 'queued', ?, ?,
                (SELECT COALESCE(MAX(queue_seq), 0) + 1 FROM jobs), ?, ?, ?, ?, ?, ?)
        RETURNING id, queue_seq
        """,
        (
            request.guild_id,
            request.channel_id,
            request.user_id,
            request.params.prompt,
            request.params.model_dump_json(),
            request.params.image_url,
            now,
            now,
            request.interaction_token,
            request.interaction_created_at,
            request.placeholder_channel_id,
            request.placeholder_message_id,
            request.upload_limit,
            request.event_id,
        ),
    ).fetchone()
    conn.execute(
        "INSERT INTO quota_ledger (job_id, guild_id, user_id, status, amount, reserved_at)"
        " VALUES (?, ?, ?, 'reserved', ?, ?)",
        (job_id, request.guild_id, request.user_id, limits.price_per_job, now),
    )
    return Reserved(
        job_id=int(job_id), queue_seq=int(queue_seq), used=decision.used, limit=decision.limit
    )


class LedgerQueries(SqliteBase):
    """Check-and-reserve, the quota view, and settling reservations."""

    async def reserve(self, request: ReserveRequest, defaults: LimitDefaults) -> Reserved | Refusal:
        """Check every limit and, if allowed, create the job (`queued`) and hold its quota —
        all in one `BEGIN IMMEDIATE` transaction, so concurrent callers (tasks, connections or
        processes) can never pass more than a limit allows.

        Raises `StoreUnavailable` when the database cannot be used: refuse, never proceed.
        """
        now = self._now(request.now)
        return await self._run(partial(_reserve, request=request, defaults=defaults, now=now))

    async def quota_view(
        self,
        guild_id: int,
        user_id: int,
        role_ids: Iterable[int],
        defaults: LimitDefaults,
        now: float | None = None,
    ) -> QuotaView:
        """A member's effective limits, usage and what `reserve` would answer now."""
        now = self._now(now)

        def body(conn: sqlite3.Connection) -> QuotaView:
            limits, block, reset_at = _load_limits(conn, guild_id, user_id, role_ids, defaults)
            usage = _snapshot(conn, guild_id, user_id, limits, block, reset_at, now)
            return QuotaView(limits, usage, decide(limits, usage, now))

        # A read transaction: one consistent snapshot without taking SQLite's write lock.
        return await self._run(body, begin="BEGIN")

    # -- quota: settle -----------------------------------------------------------------------

    async def charge(
        self, job_id: int, cost: float | None = None, now: float | None = None
    ) -> bool:
        """Settle a reservation as charged (the video was delivered). `cost` is Segmind's
        `metrics.cost` when known, else the reserved estimate stands. False if the job's
        reservation was already settled (idempotent: a retry never charges twice)."""
        now = self._now(now)

        def body(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                "UPDATE quota_ledger SET status = 'charged', charged_amount = COALESCE(?, amount),"
                " settled_at = ?, reason = 'delivered' WHERE job_id = ? AND status = 'reserved'",
                (cost, now, job_id),
            )
            return cursor.rowcount == 1

        return await self._run(body)

    async def release(
        self,
        job_id: int,
        reason: ReleaseReason,
        defaults: LimitDefaults | None = None,
        now: float | None = None,
        cost: float | None = None,
    ) -> ReleaseOutcome:
        """Refund a reservation: the user got no video. It stops counting toward any limit.

        For `content_blocked`, only `blocked_prompt_cap` refunds per user per guild per
        rolling 24 h are granted (cap from `defaults`, else `LimitDefaults()`); past it the job
        is charged (`cost` if given, else the estimate) and "charged" is returned — so nobody
        farms free attempts. Idempotent: "already_settled" if charged or released before.
        """
        now = self._now(now)
        cap = (defaults or LimitDefaults()).blocked_prompt_cap

        def body(conn: sqlite3.Connection) -> ReleaseOutcome:
            row = conn.execute(
                "SELECT guild_id, user_id, status FROM quota_ledger WHERE job_id = ?", (job_id,)
            ).fetchone()
            if row is None:
                return "no_such_job"
            guild_id, user_id, status = row
            if status != "reserved":
                return "already_settled"
            if reason == "content_blocked":
                (refunds,) = conn.execute(
                    "SELECT COUNT(*) FROM quota_ledger WHERE guild_id = ? AND user_id = ? "
                    "AND status = 'released' AND reason = 'content_blocked' AND settled_at > ?",
                    (guild_id, user_id, now - DAY_SECONDS),
                ).fetchone()
                if not blocked_refund_allowed(int(refunds), cap):
                    conn.execute(
                        "UPDATE quota_ledger SET status = 'charged', "
                        "charged_amount = COALESCE(?, amount), settled_at = ?, reason = ? "
                        "WHERE job_id = ?",
                        (cost, now, "content_blocked_over_cap", job_id),
                    )
                    return "charged"
            conn.execute(
                "UPDATE quota_ledger SET status = 'released', settled_at = ?, reason = ? "
                "WHERE job_id = ?",
                (now, reason, job_id),
            )
            return "released"

        return await self._run(body)

    async def settle_terminal(
        self, defaults: LimitDefaults | None = None, now: float | None = None
    ) -> int:
        """Crash net for start-up: settle every reservation whose job already reached a
        terminal state (the process died between `transition` and `charge`/`release`).
        Delivered jobs are charged at their recorded cost or the estimate; the rest released
        with their state as the reason. Returns how many were settled."""
        rows = await self._fetchall(
            "SELECT j.id, j.state, j.cost FROM jobs j JOIN quota_ledger l ON l.job_id = j.id "  # noqa: S608
            f"WHERE l.status = 'reserved' AND j.state IN ({_placeholders(len(TERMINAL_STATES))})",
            tuple(sorted(TERMINAL_STATES)),
        )
        settled = 0
        for job_id, state, cost in rows:
            if state == "delivered":
                settled += await self.charge(job_id, cost, now)
            else:
                # The state names the reason: failed, expired, cancelled or unknown.
                reason = cast(ReleaseReason, state)
                outcome = await self.release(job_id, reason, defaults, now)
                settled += outcome in ("released", "charged")
        return settled

    # -- jobs: the state machine ------------------------------------------------------------
