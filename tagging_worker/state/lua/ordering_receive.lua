-- The version of an event that came without one: given at its first receipt from its call's
-- clock and remembered, so a redelivered or retried copy keeps its place.
-- KEYS[1]: the versions the call's events were given at receipt   KEYS[2]: the call's clock
-- ARGV[1]: how long the versions given are kept (s)   ARGV[2]: how long the clock is kept (s)
-- ARGV[3]: event id
-- Reply: the version, as text.
local known = redis.call('HGET', KEYS[1], ARGV[3])
if known then return known end
local v = next_version(KEYS[2], ARGV[2])
redis.call('HSET', KEYS[1], ARGV[3], v)
redis.call('EXPIRE', KEYS[1], ARGV[1])
return v
