-- What a worker does with an event. GO writes the request down as in doubt before it is sent
-- (until the API can no longer apply it); a definite answer clears it, so a crash right after
-- sending leaves it to be settled. An older event is parked while a newer one is pending, or
-- in doubt with its event unfinished (its worker died right after sending it: the newer may
-- have landed).
-- KEYS[1]: applied   KEYS[2]: pending   KEYS[3]: parked   KEYS[4]: parked messages
-- KEYS[5]: lease   KEYS[6]: the call's fates   KEYS[7]: outcomes   KEYS[8]: unsettled
-- KEYS[9]: settle index
-- ARGV[1]: version   ARGV[2]: event id   ARGV[3]: the message, kept if parked   ARGV[4]: token
-- ARGV[5]: lease (ms)   ARGV[6]: how long the call's keys are kept (s)   ARGV[7]: fate TTL (s)
-- ARGV[8]: the request's in-doubt member   ARGV[9]: until when it may land (ms)
-- ARGV[10]: call id
-- Reply: 'go', 'stale', 'parked', 'busy' or 'duplicate'.
local id = ARGV[2]
if redis.call('HEXISTS', KEYS[6], id) == 1 then return 'duplicate' end
local v = tonumber(ARGV[1])
if v <= tonumber(redis.call('GET', KEYS[1]) or '-1') then
  redis.call('ZREM', KEYS[2], id)
  redis.call('ZREM', KEYS[3], id)
  redis.call('HDEL', KEYS[4], id)
  set_fate(KEYS[6], id, 'stale', ARGV[7])
  redis.call('HINCRBY', KEYS[7], 'stale', 1)
  return 'stale'
end
if redis.call('ZCOUNT', KEYS[2], '(' .. ARGV[1], '+inf') > 0 or newer_in_doubt(KEYS[6], KEYS[8], v) then
  redis.call('ZADD', KEYS[3], v, id)
  redis.call('HSET', KEYS[4], id, ARGV[3])
  redis.call('EXPIRE', KEYS[3], ARGV[6])
  redis.call('EXPIRE', KEYS[4], ARGV[6])
  redis.call('ZREM', KEYS[2], id)
  return 'parked'
end
if not redis.call('SET', KEYS[5], ARGV[4], 'NX', 'PX', ARGV[5]) then return 'busy' end
redis.call('ZADD', KEYS[8], ARGV[9], ARGV[8])
redis.call('EXPIRE', KEYS[8], ARGV[6])
redis.call('ZADD', KEYS[9], 'LT', ARGV[9], ARGV[10])
return 'go'
