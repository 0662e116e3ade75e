-- Takes back everything a dead consumer held, each message counted as a crash, and drops the
-- consumer. Its deadline is checked again here: it may have renewed it since it was listed.
-- The oldest taken ends at the consuming end, so the messages keep their order.
-- KEYS[1]: the queue's registry of consumers   KEYS[2]: the consumer's held list
--   KEYS[3]: the queue   KEYS[4]: the queue's crash counts (hash)
-- ARGV[1]: the consumer id   ARGV[2]: crashes that quarantine a message   ARGV[3]: how long
--   crash counts are kept after the last one (ms)
-- Reply: how many messages went back, or -1 when the consumer is alive or already recovered.
local deadline = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not deadline or tonumber(deadline) > now_ms() then return -1 end
local moved = 0
while true do
  local raw = redis.call('LPOP', KEYS[2])
  if not raw then break end
  requeue_counted(raw, KEYS[3], KEYS[4], ARGV[2], ARGV[3], 'RPUSH')
  moved = moved + 1
end
redis.call('ZREM', KEYS[1], ARGV[1])
return moved
