"""The Redis key layout's history, and moving conversations from an older layout.

    layout 1   (palaver 0.1) ids global: ``p{c:<id>}:meta``/``:msgs``, ``p{i}:lru``,
               ``p{i}:t:<tenant>``
    layout 2   ids within their tenant, one hash tag for all: see ``stores.redis``

``migrate_v1`` runs when a Redis store opens: once per Redis (a marker key remembers it),
one atomic script per conversation, so palavers starting together may all run it safely.
"""

from __future__ import annotations

import re
from typing import Any

from redis.asyncio import Redis

from palaver.stores import redis_scripts

LAYOUT = b"2"
_GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")


def _glob(text: str) -> str:
    return _GLOB_SPECIAL.sub(r"\\\1", text)


async def migrate_v1(r: Redis, prefix: str) -> int:
    """Move every layout-1 conversation under ``prefix``; how many moved."""
    marker = f"{prefix}{{conv}}:layout"
    if await r.get(marker) == LAYOUT:
        return 0
    script = r.register_script(redis_scripts.MIGRATE_V1)
    moved = 0
    old_lru = f"{prefix}{{i}}:lru"
    pattern = _glob(prefix) + "{c:*}:meta"
    async for raw in r.scan_iter(match=pattern, count=1000):
        name = raw.decode()
        conversation_id = name[len(prefix) + 3 : -len("}:meta")]
        tenant: Any = await r.hget(name, "tenant")
        old_index = f"{prefix}{{i}}:t:{(tenant or b'').decode() or '-'}"
        keys = [name, f"{prefix}{{c:{conversation_id}}}:msgs", old_lru, old_index]
        moved += int(await script(keys=keys, args=[prefix, conversation_id], client=r))
    await r.set(marker, LAYOUT)
    return moved
