"""What the emulator saw: every REST request, every gateway frame, and every spec violation."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")


class DiscordError(Exception):
    """An error response shaped like Discord's: ``{"message": ..., "code": ...}``."""

    def __init__(
        self,
        status: int,
        code: int,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(f"{status} {code} {message}")
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}
        self.extra = extra or {}

    def body(self) -> dict[str, Any]:
        return {"message": self.message, "code": self.code, **self.extra}


@dataclass(frozen=True)
class FilePart:
    """One uploaded file of a multipart request (``files[n]``)."""

    name: str  # the multipart field name, e.g. "files[0]"
    filename: str
    content_type: str
    data: bytes = field(repr=False)

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def index(self) -> int | None:
        """n for a ``files[n]`` field: the id the payload's ``attachments`` list refers to."""
        if self.name.startswith("files[") and self.name.endswith("]"):
            try:
                return int(self.name[6:-1])
            except ValueError:
                return None
        return None


@dataclass
class RequestRecord:
    """One REST request as received and answered, in arrival order."""

    index: int
    method: str
    route: str  # "METHOD /template" with the emulator's parameter names, "" if unknown
    path: str  # concrete path below /api/v10
    params: dict[str, str]
    query: dict[str, str]
    auth: str  # "Bot", "Bot(invalid)", "Bearer", "none", or the raw scheme
    audit_log_reason: str | None
    content_type: str | None  # bare media type
    json: Any  # parsed JSON body, or the parsed payload_json part of a multipart body
    files: list[FilePart]
    form: dict[str, str]  # other multipart text fields
    received_at: float
    status: int = 0
    response: Any = None
    responded_at: float = 0.0
    spec_operation: str | None = None
    violations: list[Violation] = field(default_factory=list)

    @property
    def template(self) -> str:
        return self.route.split(" ", 1)[1] if " " in self.route else ""

    @property
    def is_multipart(self) -> bool:
        return self.content_type == "multipart/form-data"

    def __str__(self) -> str:
        return f"#{self.index} {self.method} {self.path} -> {self.status}"


@dataclass(frozen=True)
class Violation:
    """A request the OpenAPI spec rejects (or a route the spec does not know)."""

    request_index: int
    method: str
    path: str
    route: str
    spec_route: str | None
    location: str  # body, path, query, route
    pointer: str
    message: str
    validator: str = ""

    def __str__(self) -> str:
        concrete = f"{self.method} {_shorten(self.path)}"
        route = f" [{self.route}]" if self.route else ""
        spec = f" (spec: {self.spec_route})" if self.spec_route else ""
        where = f"{self.location} {self.pointer}".strip()
        rule = f" [{self.validator}]" if self.validator else ""
        return f"#{self.request_index} {concrete}{route}{spec}: {where}: {self.message}{rule}"


def _shorten(path: str) -> str:
    """Interaction tokens are ~200 characters; keep paths readable in failure messages."""
    return "/".join(p if len(p) <= 24 else p[:12] + "..." for p in path.split("/"))


@dataclass(frozen=True)
class GatewayFrame:
    """One gateway frame, in either direction ("send" = emulator to bot)."""

    direction: str
    op: int | None
    event: str | None
    seq: int | None
    data: Any
    at: float


class Notifier:
    """One condition every recorder pokes, so waiters wake on events rather than polling."""

    def __init__(self) -> None:
        self._condition = asyncio.Condition()

    async def notify(self) -> None:
        async with self._condition:
            self._condition.notify_all()

    async def wait_until(self, probe: Callable[[], T | None], timeout: float, what: str) -> T:  # noqa: ASYNC109
        """Return the first non-None ``probe()``; re-checked after every recorded event."""
        found = probe()
        if found is not None:
            return found

        async def waiter() -> T:
            async with self._condition:
                while True:
                    value = probe()
                    if value is not None:
                        return value
                    await self._condition.wait()

        try:
            return await asyncio.wait_for(waiter(), timeout)
        except TimeoutError:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}") from None
