"""One error hierarchy, rendered as OpenAI error bodies.

    PalaverError                      any failure a client may see
     +-- InvalidRequest               400 invalid_request_error (param names the field)
     +-- Unauthorized                 401 invalid_api_key
     +-- NotFound                     404 (unknown route, model, conversation)
     +-- MethodNotAllowed             405
     +-- RequestTimeout               408 headers or body too slow (written by the server)
     +-- PayloadTooLarge              413
     +-- UnsupportedMediaType         415
     +-- HeadersTooLarge              431 (written by the server)
     +-- ServiceUnavailable           503
     |    +-- OutOfResources          palaver itself is out of file descriptors
     |    +-- ShuttingDown            palaver is stopping
     +-- UpstreamError                a provider failed
          +-- UpstreamUnreachable     502 could not connect, or no answer on the connection
          +-- UpstreamInterrupted     502 it answered, then broke off
          +-- UpstreamMalformed       502 it answered something that is not a valid answer
          +-- UpstreamTimeout         504
          +-- UpstreamStatus          the provider's own status and message (4xx, 429, 5xx)

Handlers raise; one place (the app) renders. A stack trace never reaches a client, and no
message names a library or quotes an exception: the technical detail goes to the log.
"""

from __future__ import annotations

from typing import Any

import orjson


class PalaverError(Exception):
    status: int = 500
    type: str = "server_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status: int | None = None,
        type: str | None = None,
        headers: tuple[tuple[bytes, bytes], ...] = (),
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        if type is not None:
            self.type = type
        self.headers = headers

    def to_dict(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_dict())


class InvalidRequest(PalaverError):
    status = 400
    type = "invalid_request_error"


class Unauthorized(PalaverError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class NotFound(PalaverError):
    status = 404
    type = "invalid_request_error"


class MethodNotAllowed(PalaverError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class RequestTimeout(PalaverError):
    status = 408
    type = "invalid_request_error"
    code = "request_timeout"


class PayloadTooLarge(PalaverError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class UnsupportedMediaType(PalaverError):
    status = 415
    type = "invalid_request_error"
    code = "unsupported_media_type"


class HeadersTooLarge(PalaverError):
    status = 431
    type = "invalid_request_error"
    code = "request_headers_too_large"


class ServiceUnavailable(PalaverError):
    status = 503
    type = "service_unavailable"
    code = "service_unavailable"


class OutOfResources(ServiceUnavailable):
    """A local fault (out of file descriptors): not the provider's, so no failover."""

    code = "server_overloaded"


class ShuttingDown(ServiceUnavailable):
    code = "server_shutting_down"


class UpstreamError(PalaverError):
    """A provider failed. ``retryable`` errors let the router try the next provider."""

    status = 502
    type = "upstream_error"
    retryable = True


class UpstreamUnreachable(UpstreamError):
    code = "upstream_unreachable"


class UpstreamInterrupted(UpstreamError):
    code = "upstream_error"


class UpstreamMalformed(UpstreamError):
    code = "upstream_malformed"


class UpstreamTimeout(UpstreamError):
    status = 504
    type = "timeout_error"
    code = "upstream_timeout"


class UpstreamStatus(UpstreamError):
    """The provider answered with an error status: passed through as it said it."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str | None,
        param: str | None,
        code: str | None,
        headers: tuple[tuple[bytes, bytes], ...] = (),
        retryable: bool,
    ) -> None:
        super().__init__(
            message,
            status=status,
            type=type or ("invalid_request_error" if status < 500 else "upstream_error"),
            param=param,
            code=code,
            headers=headers,
        )
        self.retryable = retryable
