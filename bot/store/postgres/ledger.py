"""The quota ledger on PostgreSQL: check-and-reserve in one transaction serialised by advisory
locks, then settle each reservation as charged or released.

SQLite serialises every writer with BEGIN IMMEDIATE. Here unrelated members must not wait for
each other, so `reserve()` locks only the scopes whose limits apply to this request — the
global day if a global cap is set, the guild's if a guild cap is set, and always the user
(their window and in-flight jobs) — widest first, in one statement, before reading any usage.
Under READ COMMITTED every later statement of the transaction then sees every reservation
committed by whoever held those locks before: the count and the insert cannot be raced.

The spend caps count the OWNER's ledger (`spend_ledger`, see `bot.store.postgres.spend`): the
reservation holds its quote there until Segmind's bill replaces it; no refund touches it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
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
from bot.store.postgres.connection import Connection, PostgresBase, affected, lock_key
from bot.store.postgres.spend import RECORD_BILLED

GLOBAL_LOCK = lock_key("global")


def guild_lock(guild_id: int) -> int:
    return lock_key("guild", guild_id)


def user_lock(user_id: int) -> int:
    # By user alone: the in-flight limit counts the user's jobs in every guild.
    return lock_key("user", user_id)


def reserve_locks(limits: EffectiveLimits, guild_id: int, user_id: int) -> list[int]:
    """The advisory locks a reservation with these limits needs, widest first."""
    keys = []
    if (
        limits.global_daily_limit is not None
        or limits.global_spend_cap is not None
        or limits.global_monthly_cap is not None
    ):
        keys.append(GLOBAL_LOCK)
    if (
        limits.guild_daily_limit is not None
        or limits.guild_spend_cap is not None
        or limits.guild_monthly_budget is not None
    ):
        keys.append(guild_lock(guild_id))
    keys.append(user_lock(user_id))
    return keys


async def _load_limits(
    conn: Connection,
    guild_id: int,
    user_id: int,
    role_ids: Iterable[int],
    defaults: LimitDefaults,
) -> tuple[EffectiveLimits, Block | None, float | None]:
    """The member's effective limits, their block (if any) and their last window reset."""
    row = await conn.fetchrow(
        """
        SELECT g.user_limit, g.window_hours, g.concurrency, g.daily_limit, g.spend_cap,
               g.monthly_budget, u.user_id, u.user_limit, u.window_hours, u.concurrency,
               b.user_id, b.reason, b.blocked_by, b.created_at,
               r.reset_at
        FROM (SELECT 1) AS one
        LEFT JOIN guild_settings g ON g.guild_id = $1
        LEFT JOIN user_overrides u ON u.guild_id = $1 AND u.user_id = $2
        LEFT JOIN blocks b ON b.guild_id = $1 AND b.user_id = $2
        LEFT JOIN window_resets r ON r.guild_id = $1 AND r.user_id = $2
        """,
        guild_id,
        user_id,
    )
    assert row is not None  # FROM (SELECT 1) always yields one row
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
        for role_id, limit, hours, conc, is_exempt in await conn.fetch(
            "SELECT role_id, user_limit, window_hours, concurrency, false FROM role_overrides "
            "WHERE guild_id = $1 AND role_id = ANY($2::bigint[]) "
            "UNION ALL SELECT role_id, NULL, NULL, NULL, true FROM exempt_roles "
            "WHERE guild_id = $1 AND role_id = ANY($2::bigint[])",
            guild_id,
            roles,
        ):
            if is_exempt:
                exempt.add(role_id)
            else:
                role_overrides[role_id] = LimitOverride(limit, hours, conc)
    limits = effective_limits(defaults, guild, role_overrides, roles, exempt, user_override)
    return limits, block, reset_at


# Counting rows of the ledger inside a window, for one user, one guild or everyone. The WHERE
# clauses are fixed strings; every value is a parameter ($1.. in the order given).
_WINDOW_SCOPES = {
    "user": "guild_id = $1 AND user_id = $2 AND reserved_at > $3 AND status <> 'released'",
    "guild": "guild_id = $1 AND reserved_at > $2 AND status <> 'released'",
    "global": "reserved_at > $1 AND status <> 'released'",
}


async def _pivot(
    conn: Connection, scope: str, params: tuple[Any, ...], count: int, limit: int | None
) -> WindowUsage:
    """A window of `count` rows; when it is full, also read the one row whose expiry frees a
    slot (the limit-th newest) — the only timestamp a refusal needs."""
    pivot = None
    if limit and count >= limit:
        offset = f"${len(params) + 1}"
        pivot = await conn.fetchval(
            f"SELECT reserved_at FROM quota_ledger WHERE {_WINDOW_SCOPES[scope]} "  # noqa: S608
            f"ORDER BY reserved_at DESC LIMIT 1 OFFSET {offset}",
            *params,
            limit - 1,
        )
    return WindowUsage(int(count), pivot)


async def _window(
    conn: Connection, scope: str, params: tuple[Any, ...], limit: int | None
) -> WindowUsage:
    count = await conn.fetchval(
        f"SELECT COUNT(*) FROM quota_ledger WHERE {_WINDOW_SCOPES[scope]}",  # noqa: S608
        *params,
    )
    return await _pivot(conn, scope, params, int(count), limit)


# One pass over the day's counting rows of a scope: how many, for the count caps.
# $1 guild, $2 since.
_DAY_COUNTS = """
    SELECT COUNT(*), COUNT(*) FILTER (WHERE guild_id = $1)
    FROM quota_ledger
    WHERE {where} AND reserved_at > $2 AND status <> 'released'
"""
_DAY_COUNTS_GLOBAL = _DAY_COUNTS.format(where="TRUE")
_DAY_COUNTS_GUILD = _DAY_COUNTS.format(where="guild_id = $1")

# One pass over the owner's spend ledger since the earlier of the rolling day's and the
# month's start: global and guild spend over each. A job counts at its bill once known, at its
# held quote until then — refunded or not. $1 guild, $2 day start, $3 month start, $4 the
# earliest row read.
_SPENT = "COALESCE(billed, quoted)"
_SPEND_TOTALS = f"""
    SELECT COALESCE(SUM({_SPENT}) FILTER (WHERE held_at > $2), 0),
           COALESCE(SUM({_SPENT}) FILTER (WHERE held_at > $2 AND guild_id = $1), 0),
           COALESCE(SUM({_SPENT}) FILTER (WHERE held_at >= $3), 0),
           COALESCE(SUM({_SPENT}) FILTER (WHERE held_at >= $3 AND guild_id = $1), 0)
    FROM spend_ledger
    WHERE {{where}} AND held_at >= $4
"""  # noqa: S608  # fixed SQL fragments only
_SPEND_TOTALS_GLOBAL = _SPEND_TOTALS.format(where="TRUE")
_SPEND_TOTALS_GUILD = _SPEND_TOTALS.format(where="guild_id = $1")


async def _spend(
    conn: Connection, guild_id: int, limits: EffectiveLimits, now: float
) -> tuple[float, float, float, float]:
    """(global day, guild day, global month, guild month) spend, reading only the scopes
    whose caps apply."""
    if limits.global_spend_cap is not None or limits.global_monthly_cap is not None:
        sql = _SPEND_TOTALS_GLOBAL
    elif limits.guild_spend_cap is not None or limits.guild_monthly_budget is not None:
        sql = _SPEND_TOTALS_GUILD
    else:
        return 0.0, 0.0, 0.0, 0.0
    day, month = now - DAY_SECONDS, month_start(now)
    # Without a monthly cap the month's rows are not read at all (its sums are then unused).
    monthly = limits.global_monthly_cap is not None or limits.guild_monthly_budget is not None
    row = await conn.fetchrow(sql, guild_id, day, month, min(day, month) if monthly else day)
    assert row is not None  # an aggregate always yields one row
    return float(row[0]), float(row[1]), float(row[2]), float(row[3])


async def _snapshot(
    conn: Connection,
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
        for r in await conn.fetch(
            "SELECT id FROM jobs WHERE user_id = $1 AND state = ANY($2::text[]) "
            "ORDER BY queue_seq LIMIT $3",
            user_id,
            list(NONTERMINAL_STATES),
            limits.concurrency,
        )
    )
    user_window = await _window(conn, "user", (guild_id, user_id, window_start), limits.user_limit)
    global_count = guild_count = 0
    if limits.global_daily_limit is not None:
        row = await conn.fetchrow(_DAY_COUNTS_GLOBAL, guild_id, day_start)
        assert row is not None  # an aggregate always yields one row
        global_count, guild_count = row
    elif limits.guild_daily_limit is not None:
        # Only this guild's cap applies: scan this guild's rows, not everyone's.
        row = await conn.fetchrow(_DAY_COUNTS_GUILD, guild_id, day_start)
        assert row is not None
        _, guild_count = row
    global_spend, guild_spend, global_month, guild_month = await _spend(conn, guild_id, limits, now)
    guild_day = await _pivot(
        conn, "guild", (guild_id, day_start), guild_count, limits.guild_daily_limit
    )
    global_day = await _pivot(conn, "global", (day_start,), global_count, limits.global_daily_limit)
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


async def _with_spend_free_at(
    conn: Connection, refusal: Refusal, guild_id: int, quote: float, now: float
) -> Refusal:
    """A rolling-day spend refusal with the moment enough of the day's spend rolls off (read
    only on this rare path, under the same locks as the decision)."""
    if refusal.kind not in ("spend_cap", "guild_spend_cap") or refusal.limit is None:
        return refusal
    if refusal.kind == "guild_spend_cap":
        rows = await conn.fetch(
            f"SELECT held_at, {_SPENT} FROM spend_ledger WHERE guild_id = $1 AND held_at > $2 "  # noqa: S608
            "ORDER BY held_at",
            guild_id,
            now - DAY_SECONDS,
        )
    else:
        rows = await conn.fetch(
            f"SELECT held_at, {_SPENT} FROM spend_ledger WHERE held_at > $1 ORDER BY held_at",  # noqa: S608
            now - DAY_SECONDS,
        )
    frees = spend_frees_at(((r[0], r[1]) for r in rows), refusal.spent or 0.0, quote, refusal.limit)
    return replace(refusal, next_free_at=frees)


class LedgerQueries(PostgresBase):
    """Check-and-reserve, the quota view, and settling reservations."""

    async def reserve(self, request: ReserveRequest, defaults: LimitDefaults) -> Reserved | Refusal:
        """Check every limit and, if allowed, create the job (`queued`) and hold its quota —
        in one transaction that first takes the advisory locks of every scope whose limit
        applies, so concurrent callers (tasks, pools or nodes) never pass more than a limit
        allows.

        The limits themselves are read before the locks (their width depends on them): a
        moderator's change racing a reservation may apply to it or not, as on any backend;
        the usage that is counted is always read under the locks.

        Raises `StoreUnavailable` when the database cannot be used: refuse, never proceed.
        """
        now = self._now(request.now)
        guild_id, user_id = request.guild_id, request.user_id
        async with self._transaction() as conn:
            limits, block, reset_at = await _load_limits(
                conn, guild_id, user_id, request.role_ids, defaults
            )
            await self._lock(conn, reserve_locks(limits, guild_id, user_id))
            if request.event_id is not None:
                # Under the user's lock (every reservation takes it), before any limit: the
                # first delivery of this event holds the member's slot, and its twin must
                # find that job, not be refused for it.
                known = await conn.fetchrow(
                    "SELECT id, queue_seq FROM jobs WHERE event_id = $1", request.event_id
                )
                if known is not None:
                    return Reserved(
                        job_id=int(known[0]),
                        queue_seq=int(known[1]),
                        used=0,
                        limit=None,
                        existing=True,
                    )
            usage = await _snapshot(conn, guild_id, user_id, limits, block, reset_at, now)
            quote = limits.price_per_job if request.quote is None else request.quote
            decision = decide(limits, usage, now, quote)
            if isinstance(decision, Refusal):
                return await _with_spend_free_at(conn, decision, guild_id, quote, now)
            row = await conn.fetchrow(
                """
                INSERT INTO jobs (guild_id, channel_id, user_id, prompt, params, image_url,
                                  state, created_at, updated_at,
                                  interaction_token, interaction_created_at,
                                  placeholder_channel_id, placeholder_message_id, upload_limit,
                                  event_id)
                VALUES ($1, $2, $3, $4, $5, $6, $13, $7, $7, $8, $9, $10, $11, $12, $14)
                RETURNING id, queue_seq
                """,
                guild_id,
                request.channel_id,
                user_id,
                request.params.prompt,
                request.params.model_dump_json(),
                request.params.image_url,
                now,
                request.interaction_token,
                request.interaction_created_at,
                request.placeholder_channel_id,
                request.placeholder_message_id,
                request.upload_limit,
                initial_state(request),
                request.event_id,
            )
            assert row is not None  # INSERT … RETURNING yields the row it inserted
            job_id, queue_seq = row
            await conn.execute(
                "INSERT INTO quota_ledger (job_id, guild_id, user_id, status, amount, reserved_at)"
                " VALUES ($1, $2, $3, 'reserved', $4, $5)",
                job_id,
                guild_id,
                user_id,
                quote,
                now,
            )
            # The owner's side: the quote is held against the spend caps until Segmind's bill.
            await conn.execute(
                "INSERT INTO spend_ledger (job_id, guild_id, user_id, quoted, held_at)"
                " VALUES ($1, $2, $3, $4, $5)",
                job_id,
                guild_id,
                user_id,
                quote,
                now,
            )
            if request.approval is not None:
                # In the same transaction: a held job never exists without its expiry.
                await conn.execute(
                    "INSERT INTO approvals (job_id, guild_id, quote, created_at, expires_at)"
                    " VALUES ($1, $2, $3, $4, $5)",
                    job_id,
                    guild_id,
                    request.approval.quote,
                    now,
                    request.approval.expires_at,
                )
        return Reserved(
            job_id=int(job_id), queue_seq=int(queue_seq), used=decision.used, limit=decision.limit
        )

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
        # One consistent snapshot of every read, taking no lock: reservations keep going.
        async with self._transaction() as conn:
            await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            limits, block, reset_at = await _load_limits(
                conn, guild_id, user_id, role_ids, defaults
            )
            usage = await _snapshot(conn, guild_id, user_id, limits, block, reset_at, now)
            price = limits.price_per_job if quote is None else quote
            decision = decide(limits, usage, now, price)
            if isinstance(decision, Refusal):
                decision = await _with_spend_free_at(conn, decision, guild_id, price, now)
        return QuotaView(limits, usage, decision)

    # -- quota: settle -----------------------------------------------------------------------

    async def charge(
        self, job_id: int, cost: float | None = None, now: float | None = None
    ) -> bool:
        """Settle a reservation as charged (the video was delivered). `cost` is Segmind's
        `metrics.cost` when known, else the reserved estimate stands; a known `cost` is also
        recorded as billed (`record_billed`, source `metrics`). False if the job's
        reservation was already settled (idempotent: a retry never charges twice — the
        guarded UPDATE re-checks `status` after any concurrent one commits)."""
        now = self._now(now)
        async with self._transaction() as conn:
            status = await conn.execute(
                "UPDATE quota_ledger SET status = 'charged', "
                "charged_amount = COALESCE($1::double precision, amount), settled_at = $2, "
                "reason = 'delivered' WHERE job_id = $3 AND status = 'reserved'",
                cost,
                now,
                job_id,
            )
            if cost is not None:
                # The owner's side learns the same bill in the same commit (a history figure
                # already there stands).
                await conn.execute(RECORD_BILLED, check_billed(cost), "metrics", now, job_id)
        return affected(status) == 1

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
        async with self._transaction() as conn:
            # The row lock makes a concurrent release of the same job wait, then see it settled.
            row = await conn.fetchrow(
                "SELECT guild_id, user_id, status FROM quota_ledger WHERE job_id = $1 FOR UPDATE",
                job_id,
            )
            if row is None:
                return "no_such_job"
            guild_id, user_id, status = row
            if status != "reserved":
                return "already_settled"
            if reason == "content_blocked":
                # The user's lock: two blocked prompts settling at once cannot both take the
                # last free refund.
                await self._lock(conn, [user_lock(user_id)])
                refunds = await conn.fetchval(
                    "SELECT COUNT(*) FROM quota_ledger WHERE guild_id = $1 AND user_id = $2 "
                    "AND status = 'released' AND reason = 'content_blocked' AND settled_at > $3",
                    guild_id,
                    user_id,
                    now - DAY_SECONDS,
                )
                if not blocked_refund_allowed(int(refunds), cap):
                    await conn.execute(
                        "UPDATE quota_ledger SET status = 'charged', "
                        "charged_amount = COALESCE($1::double precision, amount), "
                        "settled_at = $2, reason = $3 WHERE job_id = $4",
                        cost,
                        now,
                        "content_blocked_over_cap",
                        job_id,
                    )
                    return "charged"
            await conn.execute(
                "UPDATE quota_ledger SET status = 'released', settled_at = $1, reason = $2 "
                "WHERE job_id = $3",
                now,
                reason,
                job_id,
            )
        return "released"

    async def settle_terminal(
        self, defaults: LimitDefaults | None = None, now: float | None = None
    ) -> int:
        """Crash net for start-up: settle every reservation whose job already reached a
        terminal state (the process died between `transition` and `charge`/`release`).
        Delivered jobs are charged at their recorded cost or the estimate; the rest released
        with their state as the reason. Returns how many were settled."""
        rows = await self._fetch(
            "SELECT j.id, j.state, j.cost FROM jobs j JOIN quota_ledger l ON l.job_id = j.id "
            "WHERE l.status = 'reserved' AND j.state = ANY($1::text[]) ORDER BY j.id",
            sorted(TERMINAL_STATES),
        )
        settled = 0
        for job_id, state, cost in rows:
            if state == "delivered":
                settled += await self.charge(job_id, cost, now)
            else:
                # The state names the reason: failed, expired, cancelled or unknown.
                outcome = await self.release(job_id, cast(ReleaseReason, state), defaults, now)
                settled += outcome in ("released", "charged")
        return settled
