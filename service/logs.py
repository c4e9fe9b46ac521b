"""JSON logs: one object per line, the request's id on every line, no keys or exact places.

The request id lives in a context variable set by the HTTP edge (``service.http.requests``).
"""

from __future__ import annotations

import contextvars
import logging
import re
import sys
from typing import Any, TextIO

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "geo_offers_request_id", default=None
)
_API_KEY = re.compile(r"go_(sdk|server|admin)_[A-Za-z0-9_-]{20,}")
_COORDINATE_FIELDS = frozenset({"lat", "lng"})
_NOT_EXTRA = frozenset(RESERVED_ATTRS) | {"message", "asctime", "request_id", "taskName"}


def current_request_id() -> str | None:
    """The id of the request being served in this context, if any."""
    return request_id_var.get()


def redact(text: str) -> str:
    """Replace API keys by ``go_<role>_***``.

    >>> redact("key go_sdk_abcdefghijklmnopqrstuvwxyz01 used")
    'key go_sdk_*** used'
    """
    return _API_KEY.sub(r"go_\1_***", text) if "go_" in text else text


def _clean(value: Any, key: str | None = None) -> Any:
    if isinstance(value, float) and key in _COORDINATE_FIELDS:
        return round(value, 3)  # ≈ 100 m: where a device was, not where it is
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: _clean(v, k if isinstance(k, str) else None) for k, v in value.items()}
    if type(value) in (list, tuple):  # exact types: a named tuple keeps its values as they are
        return type(value)(_clean(v) for v in value)
    return value


class LogHygieneFilter(logging.Filter):
    """Adds ``request_id``; rounds ``lat``/``lng`` extras to 3 decimals; redacts API keys
    in the message and in extra values. Always lets the record through."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = request_id_var.get()
        if isinstance(record.msg, str) and (
            "go_" in record.msg or any(isinstance(a, str) and "go_" in a for a in _args(record))
        ):
            try:
                message = record.getMessage()
            except Exception:  # a malformed call: let the handler report it as usual
                return True
            record.msg, record.args = redact(message), None
        for key, value in list(record.__dict__.items()):
            if key not in _NOT_EXTRA:
                cleaned = _clean(value, key)
                if cleaned is not value:
                    setattr(record, key, cleaned)
        return True


def _args(record: logging.LogRecord) -> tuple[Any, ...]:
    args = record.args
    if isinstance(args, tuple):
        return args
    return tuple(args.values()) if isinstance(args, dict) else ()


class _JsonFormatter(JsonFormatter):
    def format(self, record: logging.LogRecord) -> str:
        # Tracebacks are rendered here, after the filter: redact the final line too.
        return redact(super().format(record))


def json_formatter() -> logging.Formatter:
    """One JSON object per line: timestamp, level, logger, message, request_id, extras."""
    return _JsonFormatter(
        ["levelname", "name", "message", "request_id"],
        rename_fields={"levelname": "level", "name": "logger"},
        reserved_attrs=[*RESERVED_ATTRS, "color_message"],  # uvicorn's ANSI copy of message
        timestamp=True,
    )


class _StderrHandler(logging.StreamHandler[TextIO]):
    """Writes to whatever ``sys.stderr`` is at the time (test runners swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def json_handler(stream: Any = None) -> logging.Handler:
    """A handler with the JSON format and the hygiene filter; stderr by default."""
    handler: logging.Handler = _StderrHandler() if stream is None else logging.StreamHandler(stream)
    handler.setFormatter(json_formatter())
    handler.addFilter(LogHygieneFilter())
    return handler


def setup_logging(level: str) -> None:
    """JSON logs on stderr for the root logger; calling it again only changes the level.

    uvicorn's loggers go through the same handler so every line is JSON; its access log is
    turned off in favour of ours (route templates, no query strings).
    """
    root = logging.getLogger()
    root.setLevel(level.upper())
    if not any(getattr(h, "_geo_offers", False) for h in root.handlers):
        handler = json_handler()
        handler._geo_offers = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    for name in ("uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    # Ours replaces uvicorn's access line, which carries the raw path and query string.
    logging.getLogger("uvicorn.access").disabled = True
