-- A consumer that closes holding nothing leaves the registry at once; one still holding
-- messages stays until its deadline passes and a live consumer takes them back.
-- KEYS[1]: the queue's registry of consumers   KEYS[2]: the consumer's held list
-- ARGV[1]: the consumer id
-- Reply: 1 if it left the registry, 0 if it still holds messages.
if redis.call('LLEN', KEYS[2]) > 0 then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
return 1
