"""Routes described once: decoding of requests, encoding of responses, and the OpenAPI document.

A resource class states its role requirement (``auth``, see :mod:`tradeengine.http.auth`) and one
:class:`Operation` per HTTP method it answers. The same ``Operation`` drives three things:

- the responder decodes its body with :func:`read_body` and its query string with :func:`read_query`
  into the declared msgspec types (:mod:`tradeengine.http.models`), so a wrong type, a missing or an
  unknown field answers 400 ``VALIDATION_ERROR`` naming the field, and bad JSON 400 ``MALFORMED_JSON``;
- the responder answers with :func:`respond`, which encodes the declared response type;
- :func:`openapi_document` turns every :class:`Endpoint` into OpenAPI 3.1 (JSON Schema 2020-12 from
  msgspec), with the error statuses each operation can answer, so ``/openapi.json`` is never written
  by hand and cannot drift from the code.
"""

from __future__ import annotations

import dataclasses
import functools
import operator
import re
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar, TypeVar

import falcon
import falcon.asgi
import msgspec

from tradeengine.engine.errors import ValidationError

from .auth import ADMIN, PUBLIC, TRADER
from .errors import ECHO_LIMIT, echoed
from .models import (
    DECIMAL_PATTERN,
    PATTERN_MEANINGS,
    SYMBOL_PATTERN,
    ErrorResponse,
    Health,
    Readiness,
    Request,
    Response,
    encode,
)

T = TypeVar("T", bound=Request)

MAX_BODY_BYTES = 1 << 20
"""The longest request body read: 1 MiB (a batch of 100 orders is ~40 KB); longer ones answer 413."""

ERROR_DESCRIPTIONS = {
    400: "malformed JSON, wrong types, unknown or missing fields (VALIDATION_ERROR, MALFORMED_JSON)",
    401: "missing or unknown API key (UNAUTHENTICATED)",
    403: "the route is for admins (FORBIDDEN)",
    404: "unknown id or symbol (NOT_FOUND, UNKNOWN_SYMBOL)",
    409: "conflict with the current state",
    413: f"the request body is longer than {MAX_BODY_BYTES} bytes (PAYLOAD_TOO_LARGE)",
    415: f"the request body is declared as another type than {falcon.MEDIA_JSON} (UNSUPPORTED_MEDIA_TYPE)",
    422: "a trading rule is violated; nothing was stored or reserved",
    429: "rate limited (RATE_LIMITED); retry after Retry-After seconds",
    500: "unexpected error (INTERNAL_ERROR); quote the request id",
    503: "the database, the wallet or the pair's actor is unavailable (UNAVAILABLE); retry after Retry-After",
    504: "the engine did not answer in time; the outcome is unknown (ENGINE_TIMEOUT)",
}


@dataclasses.dataclass(frozen=True, slots=True)
class Operation:
    """One method of one route: what it takes, what it answers, and which errors it may answer.

    ``errors`` lists the statuses specific to the operation; the builder adds those every route of its
    kind can answer (400 when it takes input, 401/403 by role, 429, 500 and 503 under ``/api``, 504 when
    ``engine`` says it waits for the actors or the database to commit a change).
    """

    summary: str
    response: type[Response] | None = None
    status: int = 200
    body: type[Request] | None = None
    query: type[Request] | None = None
    errors: tuple[int, ...] = ()
    engine: bool = False
    description: str = ""
    content_type: str = falcon.MEDIA_JSON


class Resource:
    """Base of the API's resources: a role requirement and the operations by HTTP method."""

    auth: ClassVar[str] = TRADER
    operations: ClassVar[Mapping[str, Operation]] = {}


@dataclasses.dataclass(frozen=True, slots=True)
class Endpoint:
    """A URI template and the resource answering it (``None``: routed elsewhere, documented here)."""

    path: str
    resource: Resource | None
    tag: str
    auth: str = PUBLIC
    operations: Mapping[str, Operation] = dataclasses.field(default_factory=dict)

    @classmethod
    def of(cls, path: str, resource: Resource, tag: str) -> Endpoint:
        """An endpoint served by ``resource``, documented from its class attributes."""
        return cls(path, resource, tag, resource.auth, resource.operations)


# -- requests -----------------------------------------------------------------------------------------

_AT_PATH = re.compile(r" - at `\$\.?(?P<path>[^`]*)`$")
_FIELD_NAMED = re.compile(r"(?:unknown|required) field `(?P<name>[^`]+)`")
# msgspec writes a pattern as its repr: "Expected `str` matching regex '^[0-9]{1,30}(\\.[0-9]{1,30})?$'"
_PATTERN_MISMATCH = {f"Expected `str` matching regex {pattern!r}": meaning
                     for pattern, meaning in PATTERN_MEANINGS.items()}
_NOT_A_CHOICE = "Invalid enum value "
_STEP = re.compile(r"\[\d+\]|[^.\[]+")
_BOUNDS = {">=": "at least", "<=": "at most", ">": "more than", "<": "less than"}
# msgspec's other messages about one field, and what the API says instead (after the field's name).
_IN_WORDS: list[tuple[re.Pattern[str], Callable[[re.Match[str]], str]]] = [
    (re.compile(r"^Expected `(?:int|float)(?: \| null)?` (?P<op>[<>]=?) (?P<n>\S+)$"),
     lambda m: f"must be {_BOUNDS[m['op']]} {m['n']}"),
    (re.compile(r"^Expected `array` of length (?P<op>[<>]=) (?P<n>\d+)$"),
     lambda m: f"must hold {_BOUNDS[m['op']]} {m['n']} item{'' if m['n'] == '1' else 's'}"),
    (re.compile(r"^Expected `str` of length (?P<op>[<>]=) (?P<n>\d+)$"),
     lambda m: f"must be {_BOUNDS[m['op']]} {m['n']} character{'' if m['n'] == '1' else 's'} long"),
    (re.compile(r"^Expected `object(?: \| null)?`, got `\w+`$"), lambda m: "must be a JSON object"),
    (re.compile(r"^Expected `array(?: \| null)?`, got `\w+`$"), lambda m: "must be a JSON array"),
    (re.compile(r"^Expected `int(?: \| null)?`, got `\w+`$"), lambda m: "must be a whole number"),
    (re.compile(r"^Expected `bool`, got `\w+`$"), lambda m: "must be true or false"),
    (re.compile(r"^Object missing required field `[^`]+`$"), lambda m: "is required"),
    (re.compile(r"^Object contains unknown field `[^`]+`$"),
     lambda m: "is not a field of this request (unknown fields are refused)"),
]


def _bare(node: Any, metas: list[msgspec.Meta] | None = None) -> Any:
    """`node` without the Annotated[...] and Optional[...] around it; the Meta of each Annotated layer
    is added to `metas` when given."""
    while True:
        origin = typing.get_origin(node)
        if origin is typing.Annotated:
            node, *extras = typing.get_args(node)
            if metas is not None:
                metas.extend(extra for extra in extras if isinstance(extra, msgspec.Meta))
        elif origin in (typing.Union, types.UnionType):
            node = next((a for a in typing.get_args(node) if a is not type(None)), None)
        else:
            return node


def _field_type(kind: type | None, path: str) -> Any:
    """The declared type (Annotated and Optional kept) at `path` ("orders[0].side") of the Struct `kind`;
    None when the path does not lead to a field."""
    node: Any = kind
    for step in _STEP.findall(path):
        node = _bare(node)
        if step.startswith("["):
            args = typing.get_args(node)
            node = args[0] if typing.get_origin(node) is list and args else None
        elif isinstance(node, type) and issubclass(node, msgspec.Struct):
            node = next((f.type for f in msgspec.structs.fields(node) if f.encode_name == step), None)
        else:
            return None
    return node


def _choices(kind: type | None, path: str) -> tuple[Any, ...]:
    """The values of the Literal type at `path` of the Struct `kind`, in the order the model declares
    them; () when the path does not lead to one."""
    node = _bare(_field_type(kind, path))
    return typing.get_args(node) if typing.get_origin(node) is typing.Literal else ()


def _is_decimal(kind: type | None, path: str) -> bool:
    """Whether the field at `path` of `kind` is a decimal written as a string (``DecimalText``)."""
    metas: list[msgspec.Meta] = []
    _bare(_field_type(kind, path), metas)
    return any(meta.pattern == DECIMAL_PATTERN for meta in metas)


_NOT_A_STRING = re.compile(r"^Expected `str(?: \| null)?`, got `(?P<got>\w+)`$")


def _in_words(message: str, kind: type | None, path: str) -> str | None:
    """What the field at `path` takes, in words, for msgspec's `message` about it; None if not known."""
    meaning = _PATTERN_MISMATCH.get(message)
    if meaning is not None:
        return f"must be {meaning}"
    not_a_string = _NOT_A_STRING.match(message)
    if not_a_string is not None:  # the decimal hint only where a decimal is meant and a number was given
        number = not_a_string["got"] in ("int", "float")
        return ('must be a JSON string (every decimal is one: "0.5", not 0.5)'
                if number and _is_decimal(kind, path) else "must be a JSON string")
    if message.startswith(_NOT_A_CHOICE):
        choices = _choices(kind, path)
        if choices:
            return f"must be one of {', '.join(map(str, choices))}, not {message.removeprefix(_NOT_A_CHOICE)}"
        return None
    for pattern, told in _IN_WORDS:
        match = pattern.match(message)
        if match is not None:
            return told(match)
    return None


def validation_error(error: msgspec.ValidationError, kind: type | None = None) -> ValidationError:
    """Turn msgspec's message into the API's VALIDATION_ERROR naming the field at fault and saying, in
    words, what it takes ("quantity must be a decimal number written as a JSON string ...", "side must
    be one of BUY, SELL, not 'HOLD'", "limit must be at most 500"); `kind` (the Struct decoded) gives a
    field's choices. A message not put in words keeps msgspec's text, with the field named after it.
    """
    message = str(error)
    path = ""
    at = _AT_PATH.search(message)
    if at is not None:
        path = at.group("path")
        message = message[: at.start()]
    named = _FIELD_NAMED.search(message)
    if named is not None:
        path = f"{path}.{named.group('name')}" if path else named.group("name")
    told = _in_words(message, kind, path)
    if not path:  # the body itself
        return ValidationError(f"the request body {told}" if told else message)
    return ValidationError(f"{path} {told}" if told else f"{message} (field {path})", field=path)


async def read_body(req: falcon.asgi.Request, kind: type[T]) -> T:
    """Decode the request body into ``kind`` (400 when it is not JSON or not of that shape, 413 when it
    is longer than ``MAX_BODY_BYTES``: it is never read further)."""
    declared = req.content_length
    if declared is not None and declared > MAX_BODY_BYTES:
        raise _too_large()
    raw = await req.stream.read(MAX_BODY_BYTES + 1)
    if len(raw) > MAX_BODY_BYTES:
        raise _too_large()
    return decode_json(raw, kind)


def _too_large() -> falcon.HTTPContentTooLarge:
    return falcon.HTTPContentTooLarge(title="Payload too large", code="PAYLOAD_TOO_LARGE",
                                      description=f"a request body of at most {MAX_BODY_BYTES} bytes is read")


def decode_json(raw: bytes | msgspec.Raw, kind: type[T]) -> T:
    """Decode JSON bytes into ``kind``."""
    if not raw:
        raise falcon.HTTPBadRequest(title="Malformed JSON", code="MALFORMED_JSON",
                                    description="the request body is empty; a JSON document is required")
    try:
        return msgspec.json.decode(raw, type=kind)
    except msgspec.ValidationError as exc:
        raise validation_error(exc, kind) from None
    except msgspec.DecodeError as exc:
        raise falcon.HTTPBadRequest(title="Malformed JSON", code="MALFORMED_JSON",
                                    description=f"the request body is not valid JSON: {exc}") from None
    except UnicodeDecodeError:  # JSON is UTF-8; msgspec raises this for other bytes inside a string
        raise falcon.HTTPBadRequest(title="Malformed JSON", code="MALFORMED_JSON",
                                    description="the request body is not valid UTF-8") from None


def query_parameters(req: falcon.asgi.Request) -> dict[str, str]:
    """The query string's parameters by name, as every route reads them.

    A parameter given with an empty value (``symbol=``, as API.md writes its templates) is absent; one
    given twice with values is refused; the text ``null`` is no value of any parameter of the API
    (lenient conversion would read it as "absent"), so it is refused like any other bad value.
    """
    parameters: dict[str, str] = {}
    for name, value in req.params.items():
        values = [v for v in (value if isinstance(value, list) else [value]) if v != ""]
        if not values:
            continue
        if len(values) > 1:
            raise ValidationError(f"{echoed(name)} is given more than once", field=name)
        if values[0] == "null":
            raise ValidationError(
                f"{echoed(name)}=null is not a valid value; leave the parameter out instead", field=name)
        parameters[name] = values[0]
    return parameters


def refuse_unknown_parameters(parameters: Mapping[str, str], kind: type[Request] | None) -> None:
    """400 naming the first parameter that is not a field of ``kind`` (no query at all: None)."""
    known = _query_fields(kind)
    for name in parameters:
        if name not in known:
            raise ValidationError(
                f"{echoed(name)} is not a field of this request (unknown fields are refused)", field=name)


@functools.cache
def _query_fields(kind: type[Request] | None) -> frozenset[str]:
    return frozenset(() if kind is None else (f.encode_name for f in msgspec.structs.fields(kind)))


@functools.cache
def _whole_number_fields(kind: type[Request]) -> frozenset[str]:
    return frozenset(f.encode_name for f in msgspec.structs.fields(kind) if _bare(f.type) is int)


_WHOLE_NUMBER = re.compile(r"-?[0-9]+")
_DIGITS_KEPT = 30  # more digits than any bound of the API: the value is out of range either way


def read_query(req: falcon.asgi.Request, kind: type[T]) -> T:
    """Convert the query string into ``kind`` (numbers from their text).

    An absent or empty parameter takes its default (see :func:`query_parameters`). A whole number is
    written in plain digits (leading zeros are fine): ``1.0`` or ``1e2`` is not one.
    """
    parameters: dict[str, Any] = query_parameters(req)
    refuse_unknown_parameters(parameters, kind)
    for name in _whole_number_fields(kind) & parameters.keys():
        text = parameters[name]
        if not _WHOLE_NUMBER.fullmatch(text):
            raise ValidationError(f"{name} must be a whole number", field=name)
        digits = text.lstrip("-").lstrip("0")
        sign = -1 if text.startswith("-") else 1
        parameters[name] = int(text) if len(digits) <= _DIGITS_KEPT else sign * 10**_DIGITS_KEPT
    try:
        return msgspec.convert(parameters, kind, strict=False)
    except msgspec.ValidationError as exc:
        raise validation_error(exc, kind) from None


class RequestShapeMiddleware:
    """Refuse, on every route of the API, what its operation does not take, before it runs:

    - a query parameter it does not declare (routes with a query model refuse unknown parameters when
      :func:`read_query` decodes it; this covers the routes that take no query: ``/api/v1/pairs?x=1``),
      with the same words;
    - a body, on a route that takes none (a restart with ``{"force": true}`` is refused, not ignored);
    - a body declared as anything but JSON (415): API.md's bodies are ``application/json``. A body
      without a ``Content-Type`` is read as JSON.

    It runs after authentication and rate limiting (a stranger learns nothing from a 400 before their
    401).
    """

    async def process_resource(self, req: falcon.asgi.Request, resp: falcon.asgi.Response,
                               resource: object, params: dict[str, Any]) -> None:
        if not isinstance(resource, Resource):
            return
        operation = resource.operations.get("GET" if req.method == "HEAD" else req.method)
        if operation is None:
            return
        if operation.query is None:  # read_query checks the others
            refuse_unknown_parameters(query_parameters(req), None)
        if operation.body is None:
            if req.content_length or req.get_header("Transfer-Encoding") is not None:
                raise ValidationError(f"{req.method} {echoed(req.path, 2 * ECHO_LIMIT)} takes no request "
                                      "body")
        elif req.content_type is not None and _media_type(req.content_type) != falcon.MEDIA_JSON:
            raise falcon.HTTPUnsupportedMediaType(
                title="Unsupported media type", code="UNSUPPORTED_MEDIA_TYPE",
                description=f"the request body must be {falcon.MEDIA_JSON}, not "
                            f"{echoed(req.content_type)}")


def _media_type(content_type: str) -> str:
    return content_type.partition(";")[0].strip().lower()


def respond(resp: falcon.asgi.Response, body: Response, status: int = 200) -> None:
    """Answer with ``body`` encoded as JSON."""
    resp.status = status
    resp.content_type = falcon.MEDIA_JSON
    resp.data = encode(body)


# -- OpenAPI ------------------------------------------------------------------------------------------

_REF = "#/components/schemas/{name}"
_PATH_PARAMETER = re.compile(r"{([^}]+)}")


def operations_endpoints() -> list[Endpoint]:
    """Documentation of the operational routes that ``create_app`` serves itself."""
    return [
        Endpoint("/health", None, "operations", PUBLIC, {
            "GET": Operation("Liveness: the process is alive", Health)}),
        Endpoint("/ready", None, "operations", PUBLIC, {
            "GET": Operation("Readiness: every configured dependency answers (503 when one does not)",
                             Readiness, errors=(503,))}),
        Endpoint("/metrics", None, "operations", PUBLIC, {
            "GET": Operation("Prometheus metrics", content_type="text/plain")}),
        Endpoint("/openapi.json", None, "operations", PUBLIC, {
            "GET": Operation("This document", content_type="application/json")}),
    ]


def openapi_document(endpoints: Iterable[Endpoint], *, title: str, version: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``endpoints``."""
    endpoints = list(endpoints)
    types: list[Any] = [ErrorResponse]
    for endpoint in endpoints:
        for operation in endpoint.operations.values():
            types.extend(t for t in (operation.response, operation.body) if t is not None)
    _, components = msgspec.json.schema_components(list(dict.fromkeys(types)), ref_template=_REF)
    paths: dict[str, Any] = {}
    for endpoint in endpoints:
        item = paths.setdefault(endpoint.path, {})
        for method, operation in endpoint.operations.items():
            item[method.lower()] = _operation(endpoint, method, operation)
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version,
                 "description": "The trade-engine HTTP API. Decimals are JSON strings; timestamps are "
                                "RFC 3339 UTC with microseconds; every error has one shape."},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer",
                                           "description": "Authorization: Bearer <api key>"}},
            "headers": {
                "X-Request-ID": {"description": "the request id (echoed when the client sent one)",
                                 "schema": {"type": "string"}},
                "Retry-After": {"description": "seconds to wait before retrying",
                                "schema": {"type": "integer", "minimum": 0}},
            },
        },
    }


def _operation(endpoint: Endpoint, method: str, operation: Operation) -> dict[str, Any]:
    api = endpoint.path.startswith("/api/")
    parameters = [
        {"name": name, "in": "path", "required": True,
         "schema": {"type": "string", "pattern": SYMBOL_PATTERN} if name == "symbol"  # not of it: 404
         else {"type": "string", "minLength": 1}}
        for name in _PATH_PARAMETER.findall(endpoint.path)
    ]
    if operation.query is not None:
        parameters.extend(_query_parameters(operation.query))
    statuses = set(operation.errors)
    if operation.body is not None or operation.query is not None or api:
        statuses.add(400)  # every API route refuses unknown query parameters
    if operation.body is not None:
        statuses.update((413, 415))
    if endpoint.auth in (TRADER, ADMIN):
        statuses.add(401)
    if endpoint.auth == ADMIN:
        statuses.add(403)
    if parameters and any(p["in"] == "path" for p in parameters):
        statuses.add(404)
    if api:  # every API route may need the database (a key to check, a read) or an actor: 503 then
        statuses.update((429, 500, 503))
    if operation.engine:
        statuses.update((503, 504))
    responses: dict[str, Any] = {str(operation.status): _success(operation)}
    for status in sorted(statuses):
        responses[str(status)] = _error_response(status)
    document: dict[str, Any] = {
        "operationId": _operation_id(method, endpoint.path),
        "summary": operation.summary,
        "tags": [endpoint.tag],
        "responses": responses,
    }
    if operation.description:
        document["description"] = operation.description
    if parameters:
        document["parameters"] = parameters
    if operation.body is not None:
        document["requestBody"] = {"required": True, "content": {
            falcon.MEDIA_JSON: {"schema": {"$ref": _REF.format(name=operation.body.__name__)}}}}
    document["security"] = [{"apiKey": []}] if endpoint.auth in (TRADER, ADMIN) else []
    return document


def _success(operation: Operation) -> dict[str, Any]:
    headers = {"X-Request-ID": {"$ref": "#/components/headers/X-Request-ID"}}
    if operation.response is None:
        schema: dict[str, Any] = {"type": "string"} if operation.content_type.startswith("text/") else {}
        return {"description": operation.summary, "headers": headers,
                "content": {operation.content_type: {"schema": schema}}}
    return {"description": operation.summary, "headers": headers, "content": {falcon.MEDIA_JSON: {
        "schema": {"$ref": _REF.format(name=operation.response.__name__)}}}}


def _error_response(status: int) -> dict[str, Any]:
    headers = {"X-Request-ID": {"$ref": "#/components/headers/X-Request-ID"}}
    if status in (429, 503):
        headers["Retry-After"] = {"$ref": "#/components/headers/Retry-After"}
    return {"description": ERROR_DESCRIPTIONS.get(status, "error"), "headers": headers,
            "content": {falcon.MEDIA_JSON: {"schema": {"$ref": _REF.format(name="ErrorResponse")}}}}


def _query_parameters(kind: type[Request]) -> list[dict[str, Any]]:
    parameters = []
    for field in msgspec.structs.fields(kind):
        value_type = _without_none(field.type)
        schema = msgspec.json.schema(value_type)
        required = field.required
        if not required and field.default is not None and field.default is not msgspec.NODEFAULT:
            schema["default"] = field.default
        parameter = {"name": field.encode_name, "in": "query", "required": required, "schema": schema}
        if not required:  # `symbol=` is the parameter left out (see query_parameters)
            parameter["allowEmptyValue"] = True
        parameters.append(parameter)
    return parameters


def _without_none(annotation: Any) -> Any:
    """``X | None`` → ``X`` (a query parameter is absent, never null)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = [m for m in typing.get_args(annotation) if m is not type(None)]
        return functools.reduce(operator.or_, members)
    return annotation


def _operation_id(method: str, path: str) -> str:
    words = [w.strip("{}").replace("-", "_") for w in path.split("/") if w and w not in ("api", "v1")]
    return "_".join([method.lower(), *words])


class OpenApiResource:
    """``GET /openapi.json``: the document, built once."""

    auth = PUBLIC

    def __init__(self, document: dict[str, Any]) -> None:
        self._body = msgspec.json.encode(document)

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """Serve the OpenAPI document."""
        resp.content_type = falcon.MEDIA_JSON
        resp.data = self._body
