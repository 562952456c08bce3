"""What every provider offers: one completion, a stream of chunks, embeddings."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Protocol

from palaver.protocol import Json


class ChunkStream(Protocol):
    """An open upstream stream whose first chunk has already arrived.

    Iterating yields batches of chunk objects, each batch what arrived together. ``aclose``
    releases the upstream connection and must be called however the iteration ends (it
    cancels the upstream request when ended early).
    """

    def __aiter__(self) -> AsyncGenerator[list[Json], None]: ...

    async def aclose(self) -> None: ...


class Provider(Protocol):
    name: str
    # True: answers whatever model name it is asked for (echo), listed or not.
    serves_any_model: bool

    async def complete(self, payload: Json) -> Json:
        """One non-streaming completion. Raises an ``UpstreamError`` on failure."""
        ...

    async def open_stream(self, payload: Json) -> ChunkStream:
        """Start a stream and wait for its first chunk. Raises an ``UpstreamError`` on failure."""
        ...

    async def embed(self, payload: Json) -> Json:
        """One embeddings request (``POST /embeddings``). Raises an ``UpstreamError``."""
        ...

    async def list_models(self) -> list[str]:
        """The model names the upstream reports (empty if it cannot say)."""
        ...

    async def aclose(self) -> None: ...
