-- Records an event's death and stores its dead letter in one step, giving up its lease; then
-- puts the best parked older event back on the queue, unless something at least as new is
-- applied or still pending (the API must end with the newest version not dead-lettered).
-- KEYS[1]: applied   KEYS[2]: tags   KEYS[3]: pending   KEYS[4]: parked
-- KEYS[5]: parked messages   KEYS[6]: lease   KEYS[7]: the call's fates   KEYS[8]: outcomes
-- KEYS[9]: the queue   KEYS[10]: unsettled   KEYS[11]: settle index
-- KEYS[12]: the dead letters of the record's call   KEYS[13]: all dead letters
-- KEYS[14]: the record   KEYS[15]: the dead letters of its reason   KEYS[16]: of its error code
-- ARGV[1]: event id   ARGV[2]: token   ARGV[3]: fate TTL (s)
-- ARGV[4]: how long the call's keys are kept (s)   ARGV[5]: call id
-- ARGV[6]: the in-doubt member to clear ('' to keep it: the last request's outcome is unknown)
-- ARGV[7]: record json   ARGV[8]: reason   ARGV[9]: the record's call id   ARGV[10]: error code
-- ('' for none)   ARGV[11]: time of death (ms)
-- Reply: 'dead', 'resurrected' (and a parked event was put back) or 'duplicate' (the event had
--        a fate: no dead letter is stored).
local id = ARGV[1]
if redis.call('GET', KEYS[6]) == ARGV[2] then redis.call('DEL', KEYS[6]) end
if ARGV[6] ~= '' then
  redis.call('ZREM', KEYS[10], ARGV[6])
  reindex_settle(KEYS[10], KEYS[11], ARGV[5])
end
redis.call('ZREM', KEYS[3], id)
redis.call('ZREM', KEYS[4], id)
redis.call('HDEL', KEYS[5], id)
if not set_fate(KEYS[7], id, 'dead', ARGV[3]) then return 'duplicate' end
redis.call('HINCRBY', KEYS[8], 'dead', 1)
store_record(KEYS[13], KEYS[14], KEYS[15], KEYS[12], KEYS[16], id, ARGV[7], ARGV[8],
             ARGV[9], ARGV[10], ARGV[11])
redis.call('PERSIST', KEYS[1])
redis.call('PERSIST', KEYS[2])
local best = redis.call('ZREVRANGE', KEYS[4], 0, 0, 'WITHSCORES')
if #best == 0 then return 'dead' end
local score = tonumber(best[2])
if score <= tonumber(redis.call('GET', KEYS[1]) or '-1')
   or redis.call('ZCOUNT', KEYS[3], '(' .. best[2], '+inf') > 0 then
  return 'dead'
end
local parked = best[1]
local message = redis.call('HGET', KEYS[5], parked)
redis.call('ZREM', KEYS[4], parked)
redis.call('HDEL', KEYS[5], parked)
if not message then return 'dead' end
redis.call('ZADD', KEYS[3], best[2], parked)
redis.call('EXPIRE', KEYS[3], ARGV[4])
redis.call('LPUSH', KEYS[9], message)
return 'resurrected'
