"""Request ids, timing, logs (and metrics): what palaver shows of what it does (CONTRACT §10)."""

from palaver.observability.context import (
    RequestContext,
    current,
    note_model,
    note_provider,
    note_usage,
    request_id,
)
from palaver.observability.logs import access_line, logging_config

__all__ = [
    "RequestContext",
    "access_line",
    "current",
    "logging_config",
    "note_model",
    "note_provider",
    "note_usage",
    "request_id",
]
