"""Logging: text or one JSON object per line, the request id on every line of a request, and
palaver's own access log (CONTRACT §10)."""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson

from palaver.observability.context import RequestContext, current

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s:%(request)s %(message)s"
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {
    "message",
    "asctime",
    "request",
    "color_message",  # uvicorn's, with terminal colours
}


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` (and ``request``, for the text format) to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = current.get()
        record.request_id = context.id if context is not None else None
        record.request = f" [{context.id}]" if context is not None else ""
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None)
        if request_id:
            body["request_id"] = request_id
        for name, value in record.__dict__.items():
            if name not in _STANDARD and name != "request_id":
                body[name] = value
        if record.exc_info:
            body["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(body, default=str).decode()


def logging_config(log_format: str, level: str) -> dict[str, Any]:
    """A ``logging.config.dictConfig`` for palaver and uvicorn, applied in every worker."""
    formatter: dict[str, Any] = (
        {"()": JsonFormatter} if log_format == "json" else {"format": TEXT_FORMAT}
    )
    handler = {
        "class": "logging.StreamHandler",
        "formatter": "palaver",
        "filters": ["request_id"],
        "stream": "ext://sys.stderr",
    }
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_id": {"()": RequestIdFilter}},
        "formatters": {"palaver": formatter},
        "handlers": {"default": handler},
        "root": {"handlers": ["default"], "level": level.upper()},
        "loggers": {
            "uvicorn": {"handlers": [], "level": level.upper(), "propagate": True},
            "uvicorn.error": {"handlers": [], "propagate": True},
            "uvicorn.access": {"handlers": [], "propagate": False},  # palaver writes its own
        },
    }


access = logging.getLogger("palaver.access")


def access_line(context: RequestContext) -> None:
    """One line per request: what it asked, what it got, how long it took."""
    access.info(
        "%s %s %d %.1fms",
        context.route,
        context.model or "-",
        context.status,
        context.elapsed() * 1000,
        extra={
            "route": context.route,
            "status": context.status,
            "duration_ms": round(context.elapsed() * 1000, 2),
            "model": context.model,
            "provider": context.provider,
            "cache": context.cache,
            "key": context.key,
            "conversation": context.conversation,
            "input_tokens": context.input_tokens,
            "output_tokens": context.output_tokens,
        },
    )
