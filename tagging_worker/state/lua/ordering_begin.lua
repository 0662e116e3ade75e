-- What a worker does with an event. GO writes the request down as in doubt before it is sent
-- (until the API can no longer apply it); a definite answer clears it, so a crash right after
-- sending leaves it to be settled. An older event is parked while a newer one is pending, or
-- in doubt with its event unfinished (its worker died right after sending it: the newer may
-- have landed); the fates of those events are asked for (see told_keys).
-- KEYS[1]: applied   KEYS[2]: pending   KEYS[3]: parked   KEYS[4]: parked messages
-- KEYS[5]: lease   KEYS[6]: the event's fate   KEYS[7]: outcomes   KEYS[8]: unsettled
-- KEYS[9]: settle index   KEYS[10...]: the keys told
-- ARGV[1]: version   ARGV[2]: event id   ARGV[3]: the message, kept if parked   ARGV[4]: token
-- ARGV[5]: lease (ms)   ARGV[6]: how long the call's keys are kept (s)   ARGV[7]: fate TTL (s)
-- ARGV[8]: the request's in-doubt member   ARGV[9]: until when it may land (ms)
-- ARGV[10]: call id   ARGV[11...]: the keys told (a count, then kind and name of each)
-- Reply: 'go', 'stale', 'parked', 'busy' or 'duplicate'; or {'need', 'fate', event id, ...}.
local told, asked = told_keys(11), {'need'}
local id = ARGV[2]
tell(told, 'fate', id, KEYS[6])
if redis.call('EXISTS', KEYS[6]) == 1 then return 'duplicate' end
local v = tonumber(ARGV[1])
if v <= tonumber(redis.call('GET', KEYS[1]) or '-1') then
  redis.call('ZREM', KEYS[2], id)
  redis.call('ZREM', KEYS[3], id)
  redis.call('HDEL', KEYS[4], id)
  redis.call('SET', KEYS[6], 'stale', 'EX', ARGV[7])
  redis.call('HINCRBY', KEYS[7], 'stale', 1)
  return 'stale'
end
local park = redis.call('ZCOUNT', KEYS[2], '(' .. ARGV[1], '+inf') > 0
if not park then
  park = newer_in_doubt(told, asked, KEYS[8], v)
  if #asked > 1 then return asked end
end
if park then
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
