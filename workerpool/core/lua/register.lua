-- KEYS: workers, live, states. ARGV: explicit name or '', name prefix, record JSON (name filled
-- in by the script), heartbeat key prefix, heartbeat JSON, heartbeat ttl ms, instance.
-- Takes the explicit name unless a live worker holds it; otherwise the lowest free or offline
-- <prefix>NN. Returns the name, or '' when the explicit name is held by a live worker. The
-- first heartbeat is written as beat.lua writes every later one (live index included).
local function live(name)
  local raw = redis.call('HGET', KEYS[1], name)
  if not raw then return false end
  return redis.call('EXISTS', ARGV[4] .. cjson.decode(raw)['instance']) == 1
end
local name = ARGV[1]
if name ~= '' then
  if live(name) then return '' end
else
  local n = 1
  repeat
    name = ARGV[2] .. string.format('%02d', n)
    n = n + 1
  until not live(name)
end
-- The Offline instance whose name is taken over leaves the index with its record.
local old = redis.call('HGET', KEYS[1], name)
if old then
  local instance = cjson.decode(old)['instance']
  if type(instance) == 'string' and instance ~= ARGV[7] then
    redis.call('ZREM', KEYS[2], instance)
    redis.call('HDEL', KEYS[3], instance)
  end
end
local rec = cjson.decode(ARGV[3])
rec['name'] = name
redis.call('HSET', KEYS[1], name, cjson.encode(rec))
redis.call('SET', ARGV[4] .. ARGV[7], ARGV[5], 'PX', ARGV[6])
local now = redis.call('TIME')
local expires = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) + tonumber(ARGV[6])
redis.call('ZADD', KEYS[2], string.format('%d', expires), ARGV[7])
redis.call('HSET', KEYS[3], ARGV[7], cjson.decode(ARGV[5])['state'])
return name
