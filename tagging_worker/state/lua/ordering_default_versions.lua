-- Hands out one default version per event from Redis's clock, each above every default its
-- call had before: publishers on many hosts never tie, nor do events of the same millisecond.
-- KEYS[n]: the clock of the n-th event's call (repeats allowed)
-- ARGV[1]: how long a clock is kept (s)
-- Reply: the versions as text, in the order of KEYS.
local out = {}
for i, clock in ipairs(KEYS) do out[i] = next_version(clock, ARGV[1]) end
return out
