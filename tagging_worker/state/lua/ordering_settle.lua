-- Whether a write of unknown outcome that can no longer land may have regressed the call; if
-- so, takes the lease and writes the repair down as in doubt. A repair waits while a newer
-- version than the applied one is in doubt and its event unfinished: writing the applied tags
-- could undo it.
-- KEYS[1]: applied   KEYS[2]: tags   KEYS[3]: unsettled   KEYS[4]: lease   KEYS[5]: settle index
-- KEYS[6]: the call's fates
-- ARGV[1]: now (ms)   ARGV[2]: token   ARGV[3]: lease (ms)   ARGV[4]: call id
-- ARGV[5]: how long the call's keys are kept (s)   ARGV[6]: until when the repair may land (ms)
-- Reply: {'go', version, tags}, {'busy'}, {'wait'} or {'settled'}.
local current = redis.call('GET', KEYS[1])
local tags = redis.call('GET', KEYS[2])
local done = settleable(KEYS[6], KEYS[3], ARGV[1])
local stray = false
for _, member in ipairs(done) do
  if in_doubt_entry(member) ~= current then stray = true end
end
if stray and current and tags then
  if newer_in_doubt(KEYS[6], KEYS[3], tonumber(current)) then return {'busy'} end
  if not redis.call('SET', KEYS[4], ARGV[2], 'NX', 'PX', ARGV[3]) then return {'busy'} end
  redis.call('ZADD', KEYS[3], ARGV[6], current .. ':' .. ARGV[2] .. ':')
  redis.call('EXPIRE', KEYS[3], ARGV[5])
  return {'go', current, tags}
end
for _, member in ipairs(done) do redis.call('ZREM', KEYS[3], member) end
reindex_settle(KEYS[3], KEYS[5], ARGV[4])
if redis.call('EXISTS', KEYS[3]) == 1 then return {'wait'} end
return {'settled'}
