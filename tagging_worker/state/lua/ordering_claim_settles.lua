-- Queues a settle check for each call given that is still due, and makes it due again only
-- after a while, so a check lost with its worker is sent again and a waiting one not twice.
-- KEYS[1]: settle index   KEYS[2]: the queue
-- ARGV[1]: now (ms)   ARGV[2]: when a claimed call is due again (ms)
-- ARGV[3...]: a call id and its settle message, for each call
-- Reply: how many were queued.
local claimed = 0
for i = 3, #ARGV, 2 do
  local due = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if due and tonumber(due) <= tonumber(ARGV[1]) then
    redis.call('ZADD', KEYS[1], ARGV[2], ARGV[i])
    redis.call('LPUSH', KEYS[2], ARGV[i + 1])
    claimed = claimed + 1
  end
end
return claimed
