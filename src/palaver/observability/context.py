"""What palaver knows of the request it is serving: its id, its timing, what it used.

One ``RequestContext`` per HTTP request, in a context variable, so that every stage can note
what it learns (the model, the provider, the time spent waiting for it, the tokens) without
passing it along, and every log line of the request can carry its id (CONTRACT §10).
"""

from __future__ import annotations

import re
import time
from contextvars import ContextVar
from dataclasses import dataclass, field

from palaver import ids

_SANE_ID = re.compile(rb"[A-Za-z0-9._:@/+=-]{1,128}")


@dataclass(slots=True)
class RequestContext:
    id: str
    route: str = ""  # "POST /v1/chat/completions", as asked
    template: str = "other"  # the route's template, for metrics labels
    streaming: bool = False
    started: float = field(default_factory=time.perf_counter)
    provider_seconds: float = 0.0  # waiting for providers (to the answer or a stream's start)
    model: str | None = None
    provider: str | None = None
    key: str | None = None
    status: int = 0
    cache: str | None = None
    conversation: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def server_timing(self) -> bytes:
        """``Server-Timing``: palaver's own share of the time so far, and the providers'."""
        total = self.elapsed()
        own = max(0.0, total - self.provider_seconds)
        value = f"palaver;dur={own * 1000:.2f}"
        if self.provider_seconds:
            value += f', provider;dur={self.provider_seconds * 1000:.2f};desc="{self.provider}"'
        return value.encode()

    def usage(self, usage: object) -> None:
        if not isinstance(usage, dict):
            return
        prompt = usage.get("prompt_tokens", usage.get("input_tokens"))
        completion = usage.get("completion_tokens", usage.get("output_tokens"))
        if isinstance(prompt, int):
            self.input_tokens = prompt
        if isinstance(completion, int):
            self.output_tokens = completion


current: ContextVar[RequestContext | None] = ContextVar("palaver_request", default=None)


def request_id(sent: bytes | None) -> str:
    """The client's own id if it sent a sane one, else a new one."""
    if sent is not None and _SANE_ID.fullmatch(sent):
        return sent.decode()
    return "req_" + ids.token_hex(12)


def note_provider(name: str, seconds: float) -> None:
    context = current.get()
    if context is not None:
        context.provider = name
        context.provider_seconds += seconds


def note_model(model: str) -> None:
    context = current.get()
    if context is not None:
        context.model = model


def note_usage(usage: object) -> None:
    context = current.get()
    if context is not None:
        context.usage(usage)
