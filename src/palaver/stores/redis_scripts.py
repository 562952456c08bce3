"""The Lua scripts of the Redis conversation store: each write is one script, so a turn, its
trim, the indexes and the eviction of the least recently used happen in one atomic step and
one round trip, whatever other processes do at the same time.

Every key shares the hash tag ``{conv}``: on a Redis Cluster they live in one slot, which is
what lets one script update a conversation and the indexes together. ``ARGV[1]`` is the key
prefix; the other keys a script may touch (conversations it evicts) are built from it.

``shape`` strings (one per message, in a list beside the messages) carry what instruction
priority needs to trim without reading the messages: ``["s"]`` system or developer,
``["u"]`` user, ``["a", call ids...]`` assistant, ``["t", call id]`` tool, ``["o"]`` other.
``DROP`` is ``palaver.conversations.priority.keep`` in Lua; a property test holds the two
to the same answers.
"""

from __future__ import annotations

PRELUDE = r"""
local P = ARGV[1]
local TOMBSTONE_SECONDS = 86400
local RANK = {s = 2, u = 1}

local function key(kind, tenant, id) return P .. '{conv}:' .. kind .. ':' .. tenant .. ':' .. id end
local LRU = P .. '{conv}:lru'
local function tenant_index(tenant) return P .. '{conv}:t:' .. tenant end

local function clock()
  local t = redis.call('TIME')
  return t[1] .. '.' .. string.format('%06d', tonumber(t[2])), tonumber(t[1]) + tonumber(t[2]) / 1e6
end

local function forget(tenant, id)
  local meta = key('m', tenant, id)
  local epoch = redis.call('HGET', meta, 'epoch')
  if not epoch then return 0 end
  redis.call('DEL', meta, key('l', tenant, id), key('s', tenant, id), key('k', tenant, id))
  redis.call('SET', key('x', tenant, id), epoch, 'EX', TOMBSTONE_SECONDS)
  redis.call('ZREM', LRU, tenant .. ':' .. id)
  redis.call('ZREM', tenant_index(tenant), id)
  return 1
end

local function forget_member(member)
  local tenant, id = string.match(member, '^([^:]*):(.*)$')
  return forget(tenant, id)
end

-- The epoch of a live conversation, or false (an idle-expired one is forgotten here).
local function live(tenant, id, now, idle_ttl)
  local meta = key('m', tenant, id)
  local found = redis.call('HMGET', meta, 'epoch', 'updated_at')
  if not found[1] then return false end
  if idle_ttl > 0 and tonumber(found[2]) < now - idle_ttl then
    forget(tenant, id)
    return false
  end
  return tonumber(found[1])
end

local function evict(max_active, idle_ttl, now)
  local removed = 0
  if idle_ttl > 0 then
    for _, member in ipairs(redis.call('ZRANGEBYSCORE', LRU, '-inf', '(' .. (now - idle_ttl),
        'LIMIT', 0, 1000)) do
      removed = removed + forget_member(member)
    end
  end
  local excess = redis.call('ZCARD', LRU) - max_active
  if excess > 0 then
    for _, member in ipairs(redis.call('ZRANGE', LRU, 0, excess - 1)) do
      removed = removed + forget_member(member)
    end
  end
  return removed
end

local function drop(shapes, limit)
  local n = #shapes
  local floor = n + 1
  for i = n, 1, -1 do
    if shapes[i][1] == 'u' then floor = i; break end
  end
  local units, open = {}, {}
  for i = 1, n do
    local shape = shapes[i]
    local unit = nil
    if shape[1] == 't' and shape[2] then unit = open[shape[2]] end
    if unit then
      table.insert(unit, i)
    else
      unit = {i}
      table.insert(units, unit)
      if shape[1] == 'a' then
        for j = 2, #shape do open[shape[j]] = unit end
      end
    end
  end
  local candidates = {}
  for _, unit in ipairs(units) do
    if unit[#unit] < floor then table.insert(candidates, unit) end
  end
  table.sort(candidates, function(a, b)
    local ra, rb = RANK[shapes[a[1]][1]] or 0, RANK[shapes[b[1]][1]] or 0
    if ra ~= rb then return ra < rb end
    return a[1] < b[1]
  end)
  local dropped, excess = {}, n - limit
  for _, unit in ipairs(candidates) do
    if excess <= 0 then break end
    for _, i in ipairs(unit) do table.insert(dropped, i) end
    excess = excess - #unit
  end
  return dropped
end

-- Trim a conversation's two lists to `limit` messages; the count that remains.
local function trim(list, shapes, limit)
  local n = redis.call('LLEN', shapes)
  if n <= limit then return n end
  local decoded = {}
  for i, raw in ipairs(redis.call('LRANGE', shapes, 0, -1)) do decoded[i] = cjson.decode(raw) end
  local dropped = drop(decoded, limit)
  for _, i in ipairs(dropped) do
    redis.call('LSET', list, i - 1, '\0')
    redis.call('LSET', shapes, i - 1, '\0')
  end
  redis.call('LREM', list, 0, '\0')
  redis.call('LREM', shapes, 0, '\0')
  return n - #dropped
end

local function info(status, meta)
  local found = redis.call('HMGET', meta, 'created_at', 'updated_at', 'count', 'metadata', 'epoch')
  if not found[1] then return {status} end
  return {status, found[1], found[2], found[3], found[4], found[5]}
end
"""

# KEYS: meta, list, shapes, turns, tombstone, lru, tenant index
# ARGV: prefix, tenant, id, mode ('turn' | 'create'), epoch, turn id, deadline (Redis clock,
#       0 = none), max_messages, max_active, idle_ttl, metadata (JSON), n, n records, n shapes
# -> {'ok' | 'dup', created_at, updated_at, count, metadata, epoch} | {'late'} | {'gone'}
#    | {'exists'}
WRITE = (
    PRELUDE
    + r"""
local meta, list, shapes, turns, tombstone = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local tenant, id, mode = ARGV[2], ARGV[3], ARGV[4]
local epoch, turn, deadline = tonumber(ARGV[5]), ARGV[6], tonumber(ARGV[7])
local limit, max_active, idle_ttl = tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10])
local stamp, now = clock()

if turn ~= '' and redis.call('ZSCORE', turns, turn) then return info('dup', meta) end
if deadline > 0 and now > deadline then return {'late'} end

local current = live(tenant, id, now, idle_ttl)
local next_epoch = (tonumber(redis.call('GET', tombstone)) or 0) + 1
if mode == 'create' then
  if current then return {'exists'} end
  epoch = next_epoch
elseif current then
  if current ~= epoch then return {'gone'} end
elseif epoch ~= next_epoch then
  return {'gone'}
end

local created = not current
if created then
  redis.call('HSET', meta, 'created_at', stamp, 'metadata', ARGV[11], 'epoch', epoch, 'count', 0)
  redis.call('ZADD', KEYS[7], stamp, id)
end
local n = tonumber(ARGV[12])
if n > 0 then
  redis.call('RPUSH', list, unpack(ARGV, 13, 12 + n))
  redis.call('RPUSH', shapes, unpack(ARGV, 13 + n, 12 + 2 * n))
end
local count = trim(list, shapes, limit)
redis.call('HSET', meta, 'updated_at', stamp, 'count', count)
redis.call('ZADD', KEYS[6], stamp, tenant .. ':' .. id)
if turn ~= '' then
  redis.call('ZADD', turns, now, turn)
  redis.call('ZREMRANGEBYSCORE', turns, '-inf', now - 300)
end
if created then evict(max_active, 0, now) end
return info('ok', meta)
"""
)

# A conversation as it is: one command, not a MULTI/EXEC pipeline of three.
# KEYS: meta, messages, tombstone -> {meta as a flat HGETALL, the messages, the tombstone}
READ = r"""
return {redis.call('HGETALL', KEYS[1]), redis.call('LRANGE', KEYS[2], 0, -1),
  redis.call('GET', KEYS[3])}
"""

# ARGV: prefix, tenant, id, idle_ttl, metadata (JSON) -> info or {'none'}
SET_METADATA = (
    PRELUDE
    + r"""
local tenant, id = ARGV[2], ARGV[3]
local _, now = clock()
if not live(tenant, id, now, tonumber(ARGV[4])) then return {'none'} end
redis.call('HSET', KEYS[1], 'metadata', ARGV[5])
return info('ok', KEYS[1])
"""
)

# ARGV: prefix, tenant, id, idle_ttl -> 1 deleted, 0 there was none
DELETE = (
    PRELUDE
    + r"""
local _, now = clock()
if not live(ARGV[2], ARGV[3], now, tonumber(ARGV[4])) then return 0 end
return forget(ARGV[2], ARGV[3])
"""
)

# ARGV: prefix, max_active, idle_ttl -> how many went
ENFORCE = (
    PRELUDE
    + r"""
local _, now = clock()
return evict(tonumber(ARGV[2]), tonumber(ARGV[3]), now)
"""
)

# For the property test that holds ``drop`` to ``palaver.conversations.priority.keep``.
# ARGV: prefix, limit, shapes... -> the 1-based indices dropped, in drop order
DROP = (
    PRELUDE
    + r"""
local shapes = {}
for i = 3, #ARGV do shapes[i - 2] = cjson.decode(ARGV[i]) end
return drop(shapes, tonumber(ARGV[2]))
"""
)

# Layout 1 -> 2 for one conversation (palaver 0.1 named conversations globally).
# KEYS: old meta, old msgs, old lru, old tenant index ... ARGV: prefix, id
# -> 1 moved, 0 nothing to move
MIGRATE_V1 = (
    PRELUDE
    + r"""
local old_meta, old_msgs, old_lru = KEYS[1], KEYS[2], KEYS[3]
local id = ARGV[2]
local found = redis.call('HGETALL', old_meta)
if #found == 0 then return 0 end
local old = {}
for i = 1, #found, 2 do old[found[i]] = found[i + 1] end
local tenant = old['tenant'] or ''
if tenant == '' then tenant = '-' end
local meta = key('m', tenant, id)
if redis.call('EXISTS', meta) == 0 then
  redis.call('HSET', meta, 'created_at', old['created_at'], 'updated_at', old['updated_at'],
    'count', old['count'] or '0', 'metadata', old['metadata'] or '{}', 'epoch', 1)
  local list, shapes = key('l', tenant, id), key('s', tenant, id)
  for _, raw in ipairs(redis.call('LRANGE', old_msgs, 0, -1)) do
    local m = cjson.decode(raw)['m']
    local role, shape = m['role'], {'o'}
    if role == 'system' or role == 'developer' then shape = {'s'}
    elseif role == 'user' then shape = {'u'}
    elseif role == 'assistant' then
      shape = {'a'}
      if type(m['tool_calls']) == 'table' then
        for _, call in ipairs(m['tool_calls']) do
          if type(call) == 'table' and call['id'] ~= nil then
            table.insert(shape, tostring(call['id']))
          end
        end
      end
    elseif role == 'tool' then shape = {'t', tostring(m['tool_call_id'])}
    end
    redis.call('RPUSH', list, raw)
    redis.call('RPUSH', shapes, cjson.encode(shape))
  end
  redis.call('ZADD', LRU, old['updated_at'], tenant .. ':' .. id)
  redis.call('ZADD', tenant_index(tenant), old['created_at'], id)
end
redis.call('DEL', old_meta, old_msgs)
redis.call('ZREM', old_lru, id)
redis.call('ZREM', KEYS[4], id)
return 1
"""
)
