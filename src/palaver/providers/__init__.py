"""Upstream providers: an OpenAI-compatible relay, the built-in echo model, and the router."""

from __future__ import annotations

from collections.abc import Sequence

import aiohttp

from palaver.config import ProviderSettings
from palaver.providers.base import ChunkStream, Provider
from palaver.providers.echo import EchoProvider
from palaver.providers.openai import OpenAIProvider, new_session
from palaver.providers.router import ProviderRouter

__all__ = [
    "ChunkStream",
    "EchoProvider",
    "OpenAIProvider",
    "Provider",
    "ProviderRouter",
    "build_router",
    "new_session",
]


def build_router(
    settings: Sequence[ProviderSettings], session: aiohttp.ClientSession
) -> ProviderRouter:
    """The router over the configured providers, or over ``echo`` alone when there are none."""
    if not settings:
        return ProviderRouter([(EchoProvider(), ["*"])])
    routes: list[tuple[Provider, Sequence[str]]] = []
    for provider in settings:
        built: Provider = (
            EchoProvider(provider.name)
            if provider.kind == "echo"
            else OpenAIProvider(provider, session)
        )
        routes.append((built, provider.models))
    return ProviderRouter(routes)
