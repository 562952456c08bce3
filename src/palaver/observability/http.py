"""The response side of a request's observation: ``X-Request-Id`` and ``Server-Timing`` on
every response, and what its start says (status, cache, conversation) noted for the logs."""

from __future__ import annotations

from palaver.asgi import Message, Send
from palaver.observability import metrics
from palaver.observability.context import RequestContext


def observed(send: Send, context: RequestContext) -> Send:
    async def send_observed(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = list(message.get("headers", ()))
            context.status = int(message["status"])
            for name, value in headers:
                if name == b"content-type" and value.startswith(b"text/event-stream"):
                    context.streaming = True
                    if metrics.enabled:
                        metrics.stream_started(context)
                elif name == b"x-cache":
                    context.cache = value.decode("latin-1")
                elif name == b"x-conversation-id":
                    context.conversation = value.decode("latin-1")
            headers.append((b"x-request-id", context.id.encode()))
            headers.append((b"server-timing", context.server_timing()))
            message = {**message, "headers": headers}
        await send(message)

    return send_observed
