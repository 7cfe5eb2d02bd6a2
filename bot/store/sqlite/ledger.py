"""The quota ledger on SQLite: check-and-reserve in one `BEGIN IMMEDIATE` transaction, then
settle each reservation as charged or released.

`reserve()` inserts the job (`queued`) and a `reserved` ledger row atomically; `charge()` settles
it as `charged` once delivered, `release()` as `released` (refunded) when the user got no video.
Reserved and charged rows count toward every count limit; released ones do not.

The spend caps count the OWNER's ledger instead (`spend_ledger`, see `bot.store.sqlite.spend`):
`reserve()` writes the job's quote there too, held until Segmind's bill replaces it, and no
refund ever touches it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import replace
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
    month_start,
    spend_frees_at,
)
from bot.store.model import (
    NONTERMINAL_STATES,
    TERMINAL_STATES,
    QuotaView,
    ReleaseOutcome,
    ReleaseReason,
    Reserved,
    ReserveRequest,
    check_billed,
    initial_state,
)
from bot.store.sqlite.connection import SqliteBase, _placeholders
from bot.store.sqlite.spend import RECORD_BILLED


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
               g.monthly_budget, u.user_id, u.user_limit, u.window_hours, u.concurrency,
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
    guild = GuildLimits(*row[0:6])
    user_override = LimitOverride(*row[7:10]) if row[6] is not None else None
    block = (
        Block(guild_id, user_id, reason=row[11], blocked_by=row[12], created_at=row[13])
        if row[10] is not None
        else None
    )
    reset_at: float | None = row[14]

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


# One pass over the day's counting rows of a scope (a covering index each): how many, for the
# count caps.
_DAY_COUNTS = """
    SELECT COUNT(*), COALESCE(SUM(guild_id = :guild), 0)
    FROM quota_ledger
    WHERE {where} AND reserved_at > :since AND status != 'released'
"""
_DAY_COUNTS_GLOBAL = _DAY_COUNTS.format(where="1")
_DAY_COUNTS_GUILD = _DAY_COUNTS.format(where="guild_id = :guild")

# One pass over the owner's spend ledger since the earlier of the rolling day's and the
# month's start: global and guild spend over each. A job counts at its bill once known, at its
# held quote until then — refunded or not.
_SPENT = "COALESCE(billed, quoted)"
_SPEND_TOTALS = f"""
    SELECT COALESCE(SUM(CASE WHEN held_at > :day THEN {_SPENT} END), 0),
           COALESCE(SUM(CASE WHEN held_at > :day AND guild_id = :guild THEN {_SPENT} END), 0),
           COALESCE(SUM(CASE WHEN held_at >= :month THEN {_SPENT} END), 0),
           COALESCE(SUM(CASE WHEN held_at >= :month AND guild_id = :guild THEN {_SPENT} END), 0)
    FROM spend_ledger
    WHERE {{where}} AND held_at >= :since
"""  # noqa: S608  # fixed SQL fragments only
_SPEND_TOTALS_GLOBAL = _SPEND_TOTALS.format(where="1")
_SPEND_TOTALS_GUILD = _SPEND_TOTALS.format(where="guild_id = :guild")


def _spend(
    conn: sqlite3.Connection, guild_id: int, limits: EffectiveLimits, now: float
) -> tuple[float, float, float, float]:
    """(global day, guild day, global month, guild month) spend, reading only the scopes
    whose caps apply."""
    day, month = now - DAY_SECONDS, month_start(now)
    # Without a monthly cap the month's rows are not read at all (its sums are then unused).
    monthly = limits.global_monthly_cap is not None or limits.guild_monthly_budget is not None
    since = min(day, month) if monthly else day
    args = {"guild": guild_id, "day": day, "month": month, "since": since}
    if limits.global_spend_cap is not None or limits.global_monthly_cap is not None:
        totals = conn.execute(_SPEND_TOTALS_GLOBAL, args).fetchone()
    elif limits.guild_spend_cap is not None or limits.guild_monthly_budget is not None:
        totals = conn.execute(_SPEND_TOTALS_GUILD, args).fetchone()
    else:
        return 0.0, 0.0, 0.0, 0.0
    return tuple(float(t) for t in totals)  # type: ignore[return-value]


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
    if limits.global_daily_limit is not None:
        global_count, guild_count = conn.execute(
            _DAY_COUNTS_GLOBAL, {"guild": guild_id, "since": day_start}
        ).fetchone()
    elif limits.guild_daily_limit is not None:
        # Only this guild's cap applies: scan this guild's rows, not everyone's.
        _, guild_count = conn.execute(
            _DAY_COUNTS_GUILD, {"guild": guild_id, "since": day_start}
        ).fetchone()
    global_spend, guild_spend, global_month, guild_month = _spend(conn, guild_id, limits, now)
    guild_day = _pivot(conn, "guild", (guild_id, day_start), guild_count, limits.guild_daily_limit)
    global_day = _pivot(conn, "global", (day_start,), global_count, limits.global_daily_limit)
    return UsageSnapshot(
        block=None,
        in_flight_job_ids=in_flight,
        user_window=user_window,
        guild_day=guild_day,
        global_day=global_day,
        guild_spend=guild_spend,
        global_spend=global_spend,
        guild_month_spend=guild_month,
        global_month_spend=global_month,
    )


def _with_spend_free_at(
    conn: sqlite3.Connection, refusal: Refusal, guild_id: int, quote: float, now: float
) -> Refusal:
    """A rolling-day spend refusal with the moment enough of the day's spend rolls off (read
    only on this rare path, oldest first, until enough is found)."""
    if refusal.kind not in ("spend_cap", "guild_spend_cap") or refusal.limit is None:
        return refusal
    where = "guild_id = ? AND " if refusal.kind == "guild_spend_cap" else ""
    args = (guild_id,) if where else ()
    rows = conn.execute(
        f"SELECT held_at, {_SPENT} FROM spend_ledger WHERE {where}held_at > ? "  # noqa: S608
        "ORDER BY held_at",
        (*args, now - DAY_SECONDS),
    )
    frees = spend_frees_at(rows, refusal.spent or 0.0, quote, refusal.limit)
    return replace(refusal, next_free_at=frees)


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
    quote = limits.price_per_job if request.quote is None else request.quote
    decision = decide(limits, usage, now, quote)
    if isinstance(decision, Refusal):
        return _with_spend_free_at(conn, decision, request.guild_id, quote, now)
    job_id, queue_seq = conn.execute(
        """
        INSERT INTO jobs (guild_id, channel_id, user_id, prompt, params, image_url,
                          state, created_at, updated_at, queue_seq,
                          interaction_token, interaction_created_at,
                          placeholder_channel_id, placeholder_message_id, upload_limit,
                          event_id)
        VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?,
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
            initial_state(request),
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
        (job_id, request.guild_id, request.user_id, quote, now),
    )
    # The owner's side: the quote is held against the spend caps until Segmind's bill is known.
    conn.execute(
        "INSERT INTO spend_ledger (job_id, guild_id, user_id, quoted, held_at)"
        " VALUES (?, ?, ?, ?, ?)",
        (job_id, request.guild_id, request.user_id, quote, now),
    )
    if request.approval is not None:
        # In the same transaction: a held job never exists without its expiry.
        conn.execute(
            "INSERT INTO approvals (job_id, guild_id, quote, created_at, expires_at)"
            " VALUES (?, ?, ?, ?, ?)",
            (job_id, request.guild_id, request.approval.quote, now, request.approval.expires_at),
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
        *,
        quote: float | None = None,
    ) -> QuotaView:
        """A member's effective limits, usage and what `reserve` would answer now for a job
        quoted at `quote` (None: `defaults.price_per_job`)."""
        now = self._now(now)

        def body(conn: sqlite3.Connection) -> QuotaView:
            limits, block, reset_at = _load_limits(conn, guild_id, user_id, role_ids, defaults)
            usage = _snapshot(conn, guild_id, user_id, limits, block, reset_at, now)
            price = limits.price_per_job if quote is None else quote
            decision = decide(limits, usage, now, price)
            if isinstance(decision, Refusal):
                decision = _with_spend_free_at(conn, decision, guild_id, price, now)
            return QuotaView(limits, usage, decision)

        # A read transaction: one consistent snapshot without taking SQLite's write lock.
        return await self._run(body, begin="BEGIN")

    # -- quota: settle -----------------------------------------------------------------------

    async def charge(
        self, job_id: int, cost: float | None = None, now: float | None = None
    ) -> bool:
        """Settle a reservation as charged (the video was delivered). `cost` is Segmind's
        `metrics.cost` when known, else the reserved estimate stands; a known `cost` is also
        recorded as billed (`record_billed`, source `metrics`). False if the job's
        reservation was already settled (idempotent: a retry never charges twice)."""
        now = self._now(now)

        def body(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                "UPDATE quota_ledger SET status = 'charged', charged_amount = COALESCE(?, amount),"
                " settled_at = ?, reason = 'delivered' WHERE job_id = ? AND status = 'reserved'",
                (cost, now, job_id),
            )
            if cost is not None:
                # The owner's side learns the same bill in the same commit (a history figure
                # already there stands).
                conn.execute(
                    RECORD_BILLED,
                    {"amount": check_billed(cost), "source": "metrics", "now": now, "job": job_id},
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
