-- A repair was written (or refused for good): what could land before it was checked needs no
-- further repair while the version it wrote is still the applied one. The fates of the
-- in-doubt entries' events are asked for (see told_keys).
-- KEYS[1]: unsettled   KEYS[2]: lease   KEYS[3]: outcomes   KEYS[4]: settle index
-- KEYS[5]: applied   KEYS[6...]: the keys told
-- ARGV[1]: when the check was made (ms)   ARGV[2]: token   ARGV[3]: call id
-- ARGV[4]: the version written   ARGV[5]: the counter ('repaired' or 'repair_failed')
-- ARGV[6...]: the keys told (a count, then kind and name of each)
-- Reply: 1; or {'need', 'fate', event id, ...}.
local told, asked = told_keys(6), {'need'}
local done = {}
if redis.call('GET', KEYS[5]) == ARGV[4] then
  done = settleable(told, asked, KEYS[1], ARGV[1])
  if #asked > 1 then return asked end
end
redis.call('ZREM', KEYS[1], ARGV[4] .. ':' .. ARGV[2] .. ':')
for _, member in ipairs(done) do redis.call('ZREM', KEYS[1], member) end
if redis.call('GET', KEYS[2]) == ARGV[2] then redis.call('DEL', KEYS[2]) end
redis.call('HINCRBY', KEYS[3], ARGV[5], 1)
reindex_settle(KEYS[1], KEYS[4], ARGV[3])
return 1
