-- KEYS: workers. ARGV: explicit name or '', name prefix, record JSON (name filled in by the
-- script), heartbeat key prefix, heartbeat JSON, heartbeat ttl ms, instance.
-- Takes the explicit name unless a live worker holds it; otherwise the lowest free or offline
-- <prefix>NN. Returns the name, or '' when the explicit name is held by a live worker.
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
local rec = cjson.decode(ARGV[3])
rec['name'] = name
redis.call('HSET', KEYS[1], name, cjson.encode(rec))
redis.call('SET', ARGV[4] .. ARGV[7], ARGV[5], 'PX', ARGV[6])
return name
