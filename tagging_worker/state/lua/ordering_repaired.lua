-- A repair was written (or refused for good): what could land before it was checked needs no
-- further repair while the version it wrote is still the applied one.
-- KEYS[1]: unsettled   KEYS[2]: lease   KEYS[3]: outcomes   KEYS[4]: settle index
-- KEYS[5]: applied   KEYS[6]: the call's fates
-- ARGV[1]: when the check was made (ms)   ARGV[2]: token   ARGV[3]: call id
-- ARGV[4]: the version written   ARGV[5]: the counter ('repaired' or 'repair_failed')
-- Reply: 1.
local done = {}
if redis.call('GET', KEYS[5]) == ARGV[4] then
  done = settleable(KEYS[6], KEYS[1], ARGV[1])
end
redis.call('ZREM', KEYS[1], ARGV[4] .. ':' .. ARGV[2] .. ':')
for _, member in ipairs(done) do redis.call('ZREM', KEYS[1], member) end
if redis.call('GET', KEYS[2]) == ARGV[2] then redis.call('DEL', KEYS[2]) end
redis.call('HINCRBY', KEYS[3], ARGV[5], 1)
reindex_settle(KEYS[1], KEYS[4], ARGV[3])
return 1
