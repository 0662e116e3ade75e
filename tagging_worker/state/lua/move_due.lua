-- Moves the delayed retries that are due onto the queue, each exactly once.
-- KEYS[1]: the due set (message -> due time, ms)   KEYS[2]: the queue
-- ARGV[1]: now (ms)   ARGV[2]: the most to move
-- Reply: how many moved.
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, message in ipairs(due) do
  redis.call('LPUSH', KEYS[2], message)
  redis.call('ZREM', KEYS[1], message)
end
return #due
