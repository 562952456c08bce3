"""Named API keys, the models they may use, and their rate limits (CONTRACT §11)."""

from palaver.limits.access import Gate, Limiter, Pass, key_of, pass_of, usage_tokens
from palaver.limits.keys import OPEN, Key, KeyRing, ModelNotAllowed, tenant_of
from palaver.limits.memory import MemoryLimiter
from palaver.limits.redis import RedisLimiter
from palaver.limits.window import RateLimited, Usage

__all__ = [
    "OPEN",
    "Gate",
    "Key",
    "KeyRing",
    "Limiter",
    "MemoryLimiter",
    "ModelNotAllowed",
    "Pass",
    "RateLimited",
    "RedisLimiter",
    "Usage",
    "key_of",
    "pass_of",
    "tenant_of",
    "usage_tokens",
]
