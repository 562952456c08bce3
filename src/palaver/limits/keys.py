"""API keys: who is asking, what they may use, and their limits (CONTRACT §2, §11).

Keys come from ``server.api_keys`` (no limits, every model) and ``[[keys]]`` (a name shown in
logs and metrics instead of the secret, allowed models, ``rpm``, ``tpm``, ``max_parallel``).
A key is found by the SHA-256 of its secret; its *tenant* (which conversations, responses and
cache entries are its own) is derived from the secret as before, so a key moved from
``api_keys`` to ``[[keys]]`` keeps its data.
"""

from __future__ import annotations

import fnmatch
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from palaver.errors import PalaverError


def tenant_of(secret: str) -> str:
    """A stable, non-secret identity for an API key."""
    return hashlib.sha256(secret.encode()).hexdigest()[:16]


class ModelNotAllowed(PalaverError):
    status = 403
    type = "invalid_request_error"
    code = "model_not_allowed"


@dataclass(frozen=True, slots=True)
class Key:
    name: str
    tenant: str
    models: tuple[str, ...] = ("*",)
    rpm: int = 0
    tpm: int = 0
    max_parallel: int = 0

    @property
    def limited(self) -> bool:
        return bool(self.rpm or self.tpm or self.max_parallel)

    def allows(self, model: str) -> bool:
        if self.models == ("*",):  # most keys, and every request without keys: no generator
            return True
        return any(p == "*" or p == model or fnmatch.fnmatchcase(model, p) for p in self.models)

    def check_model(self, model: str) -> None:
        if not self.allows(model):
            raise ModelNotAllowed(
                f"The key '{self.name}' may not use the model '{model}'.",
                param="model",
            )

    def visible(self, models: Iterable[str]) -> list[str]:
        return [m for m in models if self.allows(m)]


OPEN = Key(name="anonymous", tenant="")  # palaver without API keys: one tenant, no limits


class KeyRing:
    """The configured keys, found by the hash of their secret."""

    def __init__(self, keys: Iterable[tuple[str, Key]]) -> None:
        self._by_hash = {hashlib.sha256(secret.encode()).digest(): key for secret, key in keys}

    def __bool__(self) -> bool:
        return bool(self._by_hash)

    def __len__(self) -> int:
        return len(self._by_hash)

    def find(self, secret: bytes) -> Key | None:
        return self._by_hash.get(hashlib.sha256(secret).digest())

    def all(self) -> list[Key]:
        return list(self._by_hash.values())
