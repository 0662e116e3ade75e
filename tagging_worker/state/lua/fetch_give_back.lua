-- Puts a held message back at the front of the queue (taken next), uncounted. Only a message
-- still held goes back, so one already acked or recovered is never doubled.
-- KEYS[1]: the consumer's held list   KEYS[2]: the queue
-- ARGV[1]: the message (its exact bytes)
-- Reply: 1 if it went back, 0 if it was no longer held.
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return 0 end
redis.call('RPUSH', KEYS[2], ARGV[1])
return 1
