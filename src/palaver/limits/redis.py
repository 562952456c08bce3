"""Limits shared by every palaver on one Redis: one budget per key, checked and counted in
one Lua script (so N replicas never admit more than the limit together), on Redis's clock.

Per key (one hash tag, so a cluster keeps them on one node): ``<p>{lim:<name>}:req``, a sorted
set of the requests admitted in the window (scored by time); ``:tok``, the answers' token
counts (members ``<id>:<tokens>``); ``:par``, the requests in flight, scored by the end of
their lease (a palaver that dies does not hold its slots past ``LEASE_SECONDS``).

Redis unreachable: requests are admitted (fail open) and the outage is logged once.
"""

from __future__ import annotations

import logging
import secrets
from typing import Any

from palaver.limits.keys import Key
from palaver.limits.window import Usage, refusal
from palaver.redis_link import RedisDown, RedisLink

log = logging.getLogger("palaver.limits")
LEASE_SECONDS = 600.0

ADMIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1])
local rpm, tpm, par = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local id, lease, count = ARGV[5], tonumber(ARGV[6]), ARGV[7] == '1'
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - window)
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
local requests = redis.call('ZCARD', KEYS[1])
local tokens = 0
for _, member in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  tokens = tokens + tonumber(string.match(member, ':(%d+)$'))
end
local in_flight = redis.call('ZCARD', KEYS[3])
local verdict = 'ok'
if not count then verdict = 'peek'
elseif par > 0 and in_flight >= par then verdict = 'max_parallel'
elseif rpm > 0 and requests >= rpm then verdict = 'rpm'
elseif tpm > 0 and tokens >= tpm then verdict = 'tpm' end
if verdict == 'ok' then
  if rpm > 0 then
    redis.call('ZADD', KEYS[1], now, id)
    redis.call('PEXPIRE', KEYS[1], window)
    requests = requests + 1
  end
  if par > 0 then
    redis.call('ZADD', KEYS[3], now + lease, id)
    redis.call('PEXPIRE', KEYS[3], lease)
  end
end
local oldest_request = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')[2] or now + window
local oldest_tokens = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')[2] or now + window
return {verdict, requests, tokens, tostring(oldest_request + window - now),
        tostring(oldest_tokens + window - now), in_flight}
"""

RECORD = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
return 1
"""


class RedisLimiter:
    def __init__(self, link: RedisLink, window: float = 60.0) -> None:
        self._link = link
        self._window_ms = int(window * 1000)
        self._admit = link.client.register_script(ADMIT)
        self._record = link.client.register_script(RECORD)
        self._outage = False

    @property
    def available(self) -> bool:
        return not self._link.down

    def _keys(self, key: Key) -> list[str]:
        base = f"{self._link.prefix}{{lim:{key.name}}}"
        return [f"{base}:req", f"{base}:tok", f"{base}:par"]

    def _down(self, exc: Exception) -> None:
        if not self._outage:
            log.warning("rate limits: Redis is unreachable, requests are admitted (%s)", exc)
        self._outage = True

    def _up(self) -> None:
        if self._outage:
            log.warning("rate limits: Redis is reachable again, limits apply")
        self._outage = False

    async def admit(self, key: Key, request_id: str, count: bool = True) -> Usage | None:
        """Count the request in (``count``; else only read the key's use), or raise
        ``RateLimited``; None when Redis is unreachable (the request is admitted)."""
        args: list[Any] = [self._window_ms, key.rpm, key.tpm, key.max_parallel, request_id]
        args += [int(LEASE_SECONDS * 1000), "1" if count else "0"]
        try:
            reply: Any = await self._link.run(
                lambda r: self._admit(keys=self._keys(key), args=args, client=r)
            )
        except RedisDown as exc:
            self._down(exc)
            return None
        self._up()
        verdict = reply[0].decode() if isinstance(reply[0], bytes) else str(reply[0])
        usage = Usage(
            requests=int(reply[1]),
            tokens=int(reply[2]),
            requests_reset=max(0.0, float(reply[3]) / 1000),
            tokens_reset=max(0.0, float(reply[4]) / 1000),
            in_flight=int(reply[5]),
        )
        if verdict not in ("ok", "peek"):
            raise refusal(key, verdict, usage)
        return usage

    async def release(self, key: Key, request_id: str) -> None:
        if not key.max_parallel:
            return
        try:
            await self._link.run(lambda r: r.zrem(self._keys(key)[2], request_id))
        except RedisDown as exc:
            self._down(exc)

    async def record(self, key: Key, tokens: int) -> None:
        if not key.tpm or tokens <= 0:
            return
        member = f"{secrets.token_hex(6)}:{tokens}"
        try:
            await self._link.run(
                lambda r: self._record(
                    keys=[self._keys(key)[1]], args=[member, self._window_ms], client=r
                )
            )
        except RedisDown as exc:
            self._down(exc)

    async def close(self) -> None:
        return None
