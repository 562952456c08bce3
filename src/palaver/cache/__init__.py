"""The response cache and single-flight: one upstream call for identical requests.

base.py            cache keys, the request's Cache-Control policy, the backend protocol,
                   the memory backend
flights.py         single-flight within a process: one call shared by identical requests
redis.py           the Redis backend, shared by every palaver
redis_flights.py   single-flight across processes: a renewed lock, a Redis Stream
redis_channels.py  one pub/sub connection per process for the calls it follows
"""

from __future__ import annotations

from palaver.cache.base import (
    CacheBackend,
    CacheUnavailable,
    MemoryCache,
    Policy,
    cache_key,
    policy_of,
)

__all__ = ["CacheBackend", "CacheUnavailable", "MemoryCache", "Policy", "cache_key", "policy_of"]
