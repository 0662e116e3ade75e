-- Records a success: the version becomes the call's applied one unless a newer one is (then
-- the fate is stale and a repair is asked for: this write landed on top of it), and the parked
-- events it supersedes get their fate.
-- KEYS[1]: applied   KEYS[2]: tags   KEYS[3]: pending   KEYS[4]: parked
-- KEYS[5]: parked messages   KEYS[6]: lease   KEYS[7]: the call's fates   KEYS[8]: outcomes
-- KEYS[9]: unsettled   KEYS[10]: the call's dead letters   KEYS[11]: settle index
-- ARGV[1]: version   ARGV[2]: event id   ARGV[3]: token   ARGV[4]: tags written
-- ARGV[5]: how long the call's keys are kept (s)   ARGV[6]: fate TTL (s)   ARGV[7]: now (ms)
-- ARGV[8]: call id   ARGV[9]: the request's in-doubt member
-- Reply: {fate given ('' if another copy finished first), 1 if a repair is needed else 0}.
local v, id = tonumber(ARGV[1]), ARGV[2]
if redis.call('HGET', KEYS[7], id) == 'dead' then
  -- Dead-lettered meanwhile (another copy was refused), yet this write landed: undo it now.
  redis.call('ZADD', KEYS[9], ARGV[7], ARGV[9])
  redis.call('EXPIRE', KEYS[9], ARGV[5])
  reindex_settle(KEYS[9], KEYS[11], ARGV[8])
  if redis.call('GET', KEYS[6]) == ARGV[3] then redis.call('DEL', KEYS[6]) end
  return {'', 1}
end
local current = tonumber(redis.call('GET', KEYS[1]) or '-1')
local fate, repair = 'applied', 0
redis.call('ZREM', KEYS[9], ARGV[9])
if v > current then
  redis.call('SET', KEYS[1], ARGV[1])
  redis.call('SET', KEYS[2], ARGV[4])
elseif v < current or redis.call('GET', KEYS[2]) ~= ARGV[4] then
  if v < current then fate = 'stale' end
  redis.call('ZADD', KEYS[9], ARGV[7], ARGV[9])
  redis.call('EXPIRE', KEYS[9], ARGV[5])
  repair = 1
end
reindex_settle(KEYS[9], KEYS[11], ARGV[8])
keep_version(KEYS[1], KEYS[2], KEYS[10], ARGV[5])
redis.call('ZREM', KEYS[3], id)
local superseded = 0
for _, member in ipairs(redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', ARGV[1])) do
  redis.call('HDEL', KEYS[5], member)
  if member ~= id and set_fate(KEYS[7], member, 'superseded', ARGV[6]) then
    superseded = superseded + 1
  end
end
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', ARGV[1])
redis.call('ZREM', KEYS[4], id)
redis.call('HDEL', KEYS[5], id)
if superseded > 0 then redis.call('HINCRBY', KEYS[8], 'superseded', superseded) end
if redis.call('GET', KEYS[6]) == ARGV[3] then redis.call('DEL', KEYS[6]) end
if not set_fate(KEYS[7], id, fate, ARGV[6]) then return {'', repair} end
redis.call('HINCRBY', KEYS[8], fate, 1)
return {fate, repair}
