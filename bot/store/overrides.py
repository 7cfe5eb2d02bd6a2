"""The per-role and per-user limit overrides as the bot calls them, the same on every backend:
each backend supplies the two queries (`_overrides`, `_set_override`) in its own SQL."""

from __future__ import annotations

from bot.quota import LimitOverride


class OverrideCalls:
    """Mixed into a backend's moderation queries, which implement the two methods below."""

    async def _overrides(self, table: str, key: str, guild_id: int) -> dict[int, LimitOverride]:
        raise NotImplementedError

    async def _set_override(
        self,
        table: str,
        key: str,
        guild_id: int,
        target_id: int,
        override: LimitOverride | None,
        actor_id: int,
        now: float | None,
    ) -> None:
        raise NotImplementedError

    async def role_overrides(self, guild_id: int) -> dict[int, LimitOverride]:
        """Every role override in the guild, by role id."""
        return await self._overrides("role_overrides", "role_id", guild_id)

    async def set_role_override(
        self,
        guild_id: int,
        role_id: int,
        override: LimitOverride | None,
        *,
        actor_id: int,
        now: float | None = None,
    ) -> None:
        """Set a role's override; `None` (or an all-`None` override) removes it."""
        await self._set_override(
            "role_overrides", "role_id", guild_id, role_id, override, actor_id, now
        )

    async def user_overrides(self, guild_id: int) -> dict[int, LimitOverride]:
        """Every user override in the guild, by user id."""
        return await self._overrides("user_overrides", "user_id", guild_id)

    async def set_user_override(
        self,
        guild_id: int,
        user_id: int,
        override: LimitOverride | None,
        *,
        actor_id: int,
        now: float | None = None,
    ) -> None:
        """Set a user's override; `None` (or an all-`None` override) removes it."""
        await self._set_override(
            "user_overrides", "user_id", guild_id, user_id, override, actor_id, now
        )
