"""Validate REST requests against Discord's official OpenAPI 3.1 spec.

The spec lives outside the repository (``<repo>/../shared/reference/discord-openapi.json``). It is
loaded and prepared once per process: every internal ``$ref`` is rewritten to an absolute URI so
any sub-schema (an operation's request body) can be validated on its own against a
``referencing.Registry`` that holds the whole document. OpenAPI 3.1 schemas are JSON Schema
2020-12, so ``Draft202012Validator`` applies as is.

Allowances (documented in README.md) are applied as named, narrow patches to single schemas, never
as a skip of the validation.
"""

from __future__ import annotations

import copy
import functools
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

SPEC_URI = "urn:discord-openapi"
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_SPEC_PATH = REPO_ROOT.parent / "shared" / "reference" / "discord-openapi.json"

_SNOWFLAKE_INT = {"type": "integer", "minimum": 0, "maximum": 2**64 - 1}


@dataclass(frozen=True)
class Allowance:
    """A documented place where the spec is stricter than what Discord accepts."""

    name: str
    schema: str  # components/schemas key that is patched
    reason: str


# Each allowance widens exactly one named component schema. See README.md "Spec allowances".
ALLOWANCES: tuple[Allowance, ...] = (
    Allowance(
        name="snowflake-as-integer",
        schema="SnowflakeType",
        reason=(
            "The spec types every snowflake in a request as a decimal string, but Discord's API "
            "accepts JSON integers too and discord.py 2.7.1 sends them as ints in request bodies "
            "(allowed_mentions.users/roles, message_reference.message_id/channel_id, the "
            "attachments[].id upload index 0..9, recipient_id of POST /users/@me/channels). "
            "Widened to: the spec's string pattern OR a non-negative integer < 2**64."
        ),
    ),
)


def _patch_schemas(schemas: dict[str, Any]) -> None:
    snowflake = schemas["SnowflakeType"]
    schemas["SnowflakeType"] = {"anyOf": [snowflake, _SNOWFLAKE_INT]}


class SpecMissingError(FileNotFoundError):
    pass


@dataclass
class SpecOperation:
    method: str
    template: str  # the spec's path template, e.g. /channels/{channel_id}/messages
    operation: dict[str, Any]
    path_params: dict[str, dict[str, Any]]
    query_params: dict[str, dict[str, Any]]
    literal_segments: int
    _regex: re.Pattern[str] = field(repr=False)
    _param_names: list[str] = field(repr=False)

    @property
    def operation_id(self) -> str:
        return str(self.operation.get("operationId", ""))

    def match(self, path: str) -> dict[str, str] | None:
        found = self._regex.fullmatch(path)
        if found is None:
            return None
        return dict(zip(self._param_names, found.groups(), strict=True))


@dataclass(frozen=True)
class SchemaError:
    """One reason a request does not conform: where in the request and what the spec says."""

    location: str  # "body", "path", "query" or "route"
    pointer: str  # JSON pointer into the body, or the parameter name
    message: str
    validator: str = ""


def _rewrite_refs(node: Any) -> Any:
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str) and value.startswith("#"):
                out[key] = SPEC_URI + value
            else:
                out[key] = _rewrite_refs(value)
        return out
    if isinstance(node, list):
        return [_rewrite_refs(v) for v in node]
    return node


def _resolve(doc: dict[str, Any], node: Any) -> Any:
    """Follow a single (already rewritten) $ref inside the document, for parameters."""
    while isinstance(node, dict) and "$ref" in node and len(node) <= 2:
        pointer = node["$ref"].removeprefix(SPEC_URI + "#/")
        target: Any = doc
        for part in pointer.split("/"):
            target = target[part.replace("~1", "/").replace("~0", "~")]
        node = target
    return node


class OpenApiSpec:
    """The parsed spec: operations by method, a schema registry and cached validators."""

    def __init__(self, raw: dict[str, Any]) -> None:
        doc = _rewrite_refs(copy.deepcopy(raw))
        _patch_schemas(doc["components"]["schemas"])
        self.doc = doc
        self.registry: Registry[Any] = Registry().with_resource(
            SPEC_URI, Resource.from_contents(doc, default_specification=DRAFT202012)
        )
        self._validators: dict[tuple[str, str, str], Draft202012Validator] = {}
        self.operations: list[SpecOperation] = []
        for template, item in doc["paths"].items():
            shared = item.get("parameters", [])
            for method, operation in item.items():
                if method == "parameters":
                    continue
                params = [_resolve(doc, p) for p in [*shared, *operation.get("parameters", [])]]
                path_params = {p["name"]: p for p in params if p.get("in") == "path"}
                query_params = {p["name"]: p for p in params if p.get("in") == "query"}
                names: list[str] = []
                parts: list[str] = []
                literal = 0
                for segment in template.strip("/").split("/"):
                    if segment.startswith("{") and segment.endswith("}"):
                        names.append(segment[1:-1])
                        parts.append("([^/]+)")
                    else:
                        literal += 1
                        parts.append(re.escape(segment))
                self.operations.append(
                    SpecOperation(
                        method=method.upper(),
                        template=template,
                        operation=operation,
                        path_params=path_params,
                        query_params=query_params,
                        literal_segments=literal,
                        _regex=re.compile("/" + "/".join(parts)),
                        _param_names=names,
                    )
                )

    def find(self, method: str, path: str) -> tuple[SpecOperation | None, dict[str, str]]:
        """The most specific operation for a concrete path (literal segments beat parameters)."""
        best: tuple[SpecOperation | None, dict[str, str]] = (None, {})
        for op in self.operations:
            if op.method != method:
                continue
            params = op.match(path)
            if params is None:
                continue
            if best[0] is None or op.literal_segments > best[0].literal_segments:
                best = (op, params)
        return best

    def validator_for(self, op: SpecOperation, content_type: str) -> Draft202012Validator | None:
        key = (op.method, op.template, content_type)
        if key in self._validators:
            return self._validators[key]
        content = op.operation.get("requestBody", {}).get("content", {})
        media = content.get(content_type)
        if media is None:
            return None
        validator = Draft202012Validator(media["schema"], registry=self.registry)
        self._validators[key] = validator
        return validator

    def _schema_errors(self, schema: dict[str, Any], value: Any) -> list[ValidationError]:
        return list(Draft202012Validator(schema, registry=self.registry).iter_errors(value))

    def validate(
        self,
        method: str,
        path: str,
        query: Mapping[str, str],
        content_type: str | None,
        body: Any,
        has_body: bool,
    ) -> tuple[SpecOperation | None, list[SchemaError]]:
        """Check one request; ``content_type`` is the bare media type, body already parsed
        (for multipart, the parsed ``payload_json``)."""
        op, params = self.find(method, path)
        if op is None:
            return None, [SchemaError("route", path, f"no operation {method} {path} in the spec")]
        errors: list[SchemaError] = []
        for name, value in params.items():
            spec_param = op.path_params.get(name)
            if spec_param is None:
                continue
            for err in self._schema_errors(spec_param.get("schema", {}), value):
                errors.append(SchemaError("path", name, err.message, str(err.validator)))
        for name, value in query.items():
            spec_param = op.query_params.get(name)
            if spec_param is None:
                errors.append(SchemaError("query", name, "query parameter not in the spec"))
                continue
            coerced = _coerce_query(_resolve(self.doc, spec_param.get("schema", {})), value)
            for err in self._schema_errors(spec_param.get("schema", {}), coerced):
                errors.append(SchemaError("query", name, err.message, str(err.validator)))
        request_body = op.operation.get("requestBody")
        if request_body is None:
            return op, errors
        if not has_body:
            if request_body.get("required"):
                errors.append(SchemaError("body", "", "the spec requires a request body"))
            return op, errors
        media_type = content_type or "application/json"
        validator = self.validator_for(op, media_type)
        if validator is None:
            allowed = ", ".join(request_body.get("content", {}))
            errors.append(
                SchemaError("body", "", f"content type {media_type!r} not accepted ({allowed})")
            )
            return op, errors
        found = list(validator.iter_errors(body))
        if found:
            worst = _deepest(best_match(found) or found[0])
            errors.append(
                SchemaError(
                    "body",
                    _pointer(worst.absolute_path),
                    _short(worst.message),
                    str(worst.validator),
                )
            )
        return op, errors


def _coerce_query(schema: dict[str, Any], value: str) -> Any:
    """Query strings are text; give the validator the type the spec declares."""
    kind = schema.get("type")
    kinds = kind if isinstance(kind, list) else [kind]
    if "boolean" in kinds:
        lowered = value.lower()
        if lowered in ("true", "1"):
            return True
        if lowered in ("false", "0"):
            return False
    if "integer" in kinds:
        try:
            return int(value)
        except ValueError:
            return value
    return value


def _deepest(error: ValidationError) -> ValidationError:
    """For anyOf/oneOf failures, the branch error that got furthest into the body: that is the
    one a reader needs ("/data/content: 5 is not a string"), not "matches none of the schemas"."""
    if not error.context:
        return error
    candidates = [_deepest(e) for e in error.context]
    deepest = max(candidates, key=lambda e: len(e.absolute_path))
    if len(deepest.absolute_path) > len(error.absolute_path):
        return deepest
    # Every branch failed right here: say why each did.
    reasons = "; ".join(dict.fromkeys(e.message for e in candidates))
    return ValidationError(
        f"{error.message}: {reasons}",
        validator=error.validator,
        path=error.absolute_path,
    )


def _pointer(path: Iterable[Any]) -> str:
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in path) or "/"


def _short(message: str, limit: int = 300) -> str:
    return message if len(message) <= limit else message[: limit - 3] + "..."


@functools.lru_cache(maxsize=4)
def load_spec(path: str | None = None) -> OpenApiSpec:
    """Load and prepare the spec once per process (it is 1.2 MB)."""
    spec_path = Path(path) if path else DEFAULT_SPEC_PATH
    if not spec_path.is_file():
        raise SpecMissingError(
            f"Discord OpenAPI spec not found at {spec_path} (expected at "
            "<repo>/../shared/reference/discord-openapi.json, from discord/discord-api-spec)"
        )
    with spec_path.open(encoding="utf-8") as fh:
        return OpenApiSpec(json.load(fh))
