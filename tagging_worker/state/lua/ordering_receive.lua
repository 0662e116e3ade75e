-- The version of an event that came without one: given at its first receipt from its call's
-- clock and remembered, so a redelivered or retried copy keeps its place.
-- KEYS[1]: the version the event was given at receipt   KEYS[2]: its call's clock
-- ARGV[1]: how long the version given is kept (s)   ARGV[2]: how long the clock is kept (s)
-- Reply: the version, as text.
local known = redis.call('GET', KEYS[1])
if known then return known end
local v = next_version(KEYS[2], ARGV[2])
redis.call('SET', KEYS[1], v, 'EX', ARGV[1])
return v
