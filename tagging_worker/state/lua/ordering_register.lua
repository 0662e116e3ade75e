-- Queues a message and registers its version as pending in one step, so an older event that
-- arrives meanwhile is parked instead of written.
-- KEYS[1]: the call's pending set   KEYS[2]: the queue
-- ARGV[1]: version   ARGV[2]: event id   ARGV[3]: message   ARGV[4]: how long pending is kept (s)
-- Reply: 1.
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('LPUSH', KEYS[2], ARGV[3])
return 1
