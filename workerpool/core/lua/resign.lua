-- KEYS: the server's lease. ARGV: this node, its token. Gives the lease up if this node holds
-- it under that token (a standby takes over at its next try); 1 if it did.
if redis.call('GET', KEYS[1]) == ARGV[1] .. ' ' .. ARGV[2] then
  return redis.call('DEL', KEYS[1])
end
return 0
