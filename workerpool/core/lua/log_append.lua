-- KEYS: step, log. ARGV: writer, batch number, then the lines as (time, stream, text) triples.
-- Appends one batch of a running step's log lines, once: the step record keeps the number of
-- each writer's last batch, so a batch sent again after its reply was lost (the connection
-- dropped after Redis applied it) is not added twice. A step whose record is gone gets nothing.
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local field = 'log:' .. ARGV[1]
if tonumber(redis.call('HGET', KEYS[1], field) or '0') >= tonumber(ARGV[2]) then return 0 end
for i = 3, #ARGV, 3 do
  redis.call('XADD', KEYS[2], '*', 't', ARGV[i], 's', ARGV[i + 1], 'x', ARGV[i + 2])
end
redis.call('HSET', KEYS[1], field, ARGV[2])
return 1
