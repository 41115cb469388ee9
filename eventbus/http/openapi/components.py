"""The OpenAPI document's shared parts: names and ids, headers, error
responses, path parameters, and helpers that build operations.

Invariant: every bound stated here is the constant the code checks
(:data:`~eventbus.model.MAX_ID`, the name pattern…), imported or derived
rather than copied, so the document cannot drift from what the server accepts.

Layer rule: the HTTP layer; pure data, no I/O.
"""

from __future__ import annotations

from typing import Any

from eventbus.model import MAX_ID, MAX_ISSUER_LEN

Schema = dict[str, Any]

#: A context, channel, consumer or token name: the charset of
#: :data:`~eventbus.model.NAME_PATTERN`, and not made only of dots (written
#: without look-ahead, which not every regex engine has).
NAME_REGEX = r"^[A-Za-z0-9_.:-]*[A-Za-z0-9_:-][A-Za-z0-9_.:-]*$"
NAME: Schema = {"type": "string", "minLength": 1, "maxLength": 128, "pattern": NAME_REGEX}
#: A scope: ``admin``, or ``ACTION:CONTEXT/CHANNEL`` with names or ``*``.
_SCOPE_PART = r"(\*|[A-Za-z0-9_.:-]{1,128})"
SCOPE_REGEX = rf"^(admin|(publish|read|consume|manage|admin):{_SCOPE_PART}/{_SCOPE_PART})$"
#: An issuer: visible text, no control characters, at most 128 characters.
ISSUER_REGEX = r"^[^\x00-\x1f\x7f]*[^\s\x00-\x1f\x7f][^\x00-\x1f\x7f]*$"
ISSUER: Schema = {"type": "string", "minLength": 1, "maxLength": MAX_ISSUER_LEN, "pattern": ISSUER_REGEX}
EVENT_ID: Schema = {"type": "integer", "minimum": 1, "maximum": MAX_ID + 1}
CURSOR: Schema = {"type": "integer", "minimum": 0, "maximum": MAX_ID}
TIMESTAMP: Schema = {"type": "number", "description": "unix seconds (fractional)"}
NULLABLE_TIMESTAMP: Schema = {"type": ["number", "null"], "description": "unix seconds, or null"}
COUNT: Schema = {"type": "integer", "minimum": 0}


def ref(kind: str, name: str) -> Schema:
    return {"$ref": f"#/components/{kind}/{name}"}


def schema(name: str) -> Schema:
    return ref("schemas", name)


def obj(properties: dict[str, Schema], required: tuple[str, ...] = (), **extra: Any) -> Schema:
    """A JSON object with exactly these members (``required`` among them)."""
    out: Schema = {"type": "object", "properties": properties, "additionalProperties": False}
    if required:
        out["required"] = list(required)
    out.update(extra)
    return out


def nullable(s: Schema) -> Schema:
    return {**s, "type": [s["type"], "null"]}


# -- headers -------------------------------------------------------------------------------
def header(description: str, s: Schema | None = None) -> Schema:
    return {"description": description, "schema": s or {"type": "string"}}


HEADERS: dict[str, Schema] = {
    "X-Request-Id": header(
        "This request's id: the client's own X-Request-Id if valid (1 to 128 of A-Z a-z 0-9 . _ : - + / = @),"
        " else one made up; log lines about the request carry it."
    ),
    "Location": header("Where the created resource is."),
    "WWW-Authenticate": header('Bearer realm="eventbus", with error="invalid_token" when a token was sent.'),
    "Retry-After": header("Seconds to wait before trying again.", {"type": "integer", "minimum": 0}),
    "Events-First-Id": header(
        "The first event the channel stores (with none stored: the id the next event will get).", EVENT_ID
    ),
    "Events-Missed": header("Events retention deleted between the cursor and this event.", COUNT),
    "Idempotent-Replayed": header(
        "Present on the replay of an earlier publish with the same key.", {"const": "true"}
    ),
    "Link": header('The next page: </channels?limit=N&after=CONTEXT/CHANNEL>; rel="next".'),
    "Cache-Control": header("no-cache on streams; private, no-store on token-authenticated reads."),
}


def headers(*names: str) -> dict[str, Schema]:
    return {name: ref("headers", name) for name in ("X-Request-Id", *names)}


# -- responses -----------------------------------------------------------------------------
def json_response(description: str, body: Schema, *header_names: str) -> Schema:
    return {
        "description": description,
        "headers": headers(*header_names),
        "content": {"application/json": {"schema": body}},
    }


def no_content(description: str) -> Schema:
    return {"description": description, "headers": headers()}


def _error(description: str, body: str = "Error", *header_names: str) -> Schema:
    return json_response(description, schema(body), *header_names)


RESPONSES: dict[str, Schema] = {
    "BadRequest": _error(
        "Bad input: a name, parameter, header or body field (the message names it), or a query parameter"
        " the route does not take."
    ),
    "Unauthorized": _error("No token where one is needed, or an invalid one.", "Error", "WWW-Authenticate"),
    "Forbidden": _error("The token lacks the scope (the message names it), or the issuer."),
    "NotFound": _error("No such resource."),
    "Conflict": _error("A conflict (see the message).", "LastIdConflict"),
    "Gone": _error("Retention deleted the events after the cursor.", "ExpiredCursor"),
    "RequestTimeout": _error(
        "The request did not arrive within --request-timeout; the connection is closed."
    ),
    "TooLarge": _error("The body is larger than --max-body (or a batch holds more than --max-batch events)."),
    "Unprocessable": _error(
        "The Idempotency-Key was used in the channel for another request; nothing stored."
    ),
    "TooManyHeld": _error(
        "The client holds --max-held-per-client long polls, next requests and streams already.",
        "Error",
        "Retry-After",
    ),
    "Unavailable": _error("The database does not answer, or every connection is serving a request."),
}
#: Which response each error status refers to.
ERROR_RESPONSES = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    408: "RequestTimeout",
    409: "Conflict",
    410: "Gone",
    413: "TooLarge",
    422: "Unprocessable",
    429: "TooManyHeld",
    503: "Unavailable",
}
#: Any request may get these: a bad query parameter, a slow or large request, no database.
ALWAYS = (400, 408, 413, 503)
SECURED = (401, 403)


def responses(ok: dict[int, Schema], *errors: int, public: bool = False) -> dict[str, Schema]:
    """An operation's responses: its successes, then every error it can give."""
    statuses = sorted({*errors, *ALWAYS, *(() if public else SECURED)})
    out = {str(status): answer for status, answer in ok.items()}
    out.update({str(s): ref("responses", ERROR_RESPONSES[s]) for s in statuses})
    return out


# -- parameters ---------------------------------------------------------------------------------
def path_name(name: str, description: str) -> Schema:
    return {"name": name, "in": "path", "required": True, "description": description, "schema": NAME}


PARAMETERS: dict[str, Schema] = {
    "context": path_name("context", "A context name."),
    "channel": path_name("channel", "A channel name."),
    "consumer": path_name("name", "A consumer name."),
    "token_name": path_name("token_name", "A token name."),
    "event_id": {
        "name": "event_id",
        "in": "path",
        "required": True,
        "description": "An event id (anything else is a 404).",
        "schema": EVENT_ID,
    },
    "sub_id": {
        "name": "sub_id",
        "in": "path",
        "required": True,
        "description": "A subscription id (anything else is a 404).",
        "schema": {"type": "integer", "minimum": 1, "maximum": 2**63 - 1},
    },
}


def params(*names: str) -> list[Schema]:
    return [ref("parameters", n) for n in names]


CHANNEL_PATH = ("context", "channel")
CONSUMER_PATH = ("context", "channel", "consumer")


def json_body(body: Schema, description: str, required: bool = True) -> Schema:
    return {
        "description": description,
        "required": required,
        "content": {"application/json": {"schema": body}},
    }
