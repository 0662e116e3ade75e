-- Gives up the call's lease if this writer still holds it, and clears its request's in-doubt
-- entry when the request can no longer land.
-- KEYS[1]: lease   KEYS[2]: unsettled   KEYS[3]: settle index
-- ARGV[1]: token   ARGV[2]: the in-doubt member to clear ('' to keep it)   ARGV[3]: call id
-- Reply: 1 if the lease was released, else 0.
if ARGV[2] ~= '' then
  redis.call('ZREM', KEYS[2], ARGV[2])
  reindex_settle(KEYS[2], KEYS[3], ARGV[3])
end
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
