-- KEYS: the server's lease, the fence, the server's heartbeat. ARGV: this node, the token it
-- holds ('' for none), the lease's length in ms, the time now, the heartbeat's life in ms.
-- Beats (a leader and a standby alike: one of them takes deployments), then renews the lease
-- this node holds under that token, or takes a lapsed lease under a new token (the fence's
-- INCR); returns the token held, or 0 while another node holds the lease.
redis.call('SET', KEYS[3], ARGV[4], 'PX', ARGV[5])
local held = redis.call('GET', KEYS[1])
if held then
  if ARGV[2] ~= '' and held == ARGV[1] .. ' ' .. ARGV[2] then
    redis.call('PEXPIRE', KEYS[1], ARGV[3])
    return tonumber(ARGV[2])
  end
  return 0
end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. token, 'PX', ARGV[3])
return token
