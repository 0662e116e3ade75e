-- Takes one timed copy of the outcome counters per slot, whichever worker comes first, and
-- forgets copies older than the history keeps.
-- KEYS[1]: the counters (hash)   KEYS[2]: the history (sorted set, score: slot start in ms)
-- ARGV[1]: the slot's start (ms)   ARGV[2]: how long the history keeps (ms)
-- Reply: 1 if this call took the slot's sample, 0 if it had been taken.
if redis.call('ZCOUNT', KEYS[2], ARGV[1], ARGV[1]) > 0 then return 0 end
local counts = redis.call('HGETALL', KEYS[1])
local fields = {}
for i = 1, #counts, 2 do fields[counts[i]] = tonumber(counts[i + 1]) end
redis.call('ZADD', KEYS[2], ARGV[1], ARGV[1] .. ' ' .. cjson.encode(fields))
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', tonumber(ARGV[1]) - tonumber(ARGV[2]))
return 1
