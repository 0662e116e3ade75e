-- Renews a consumer's deadline: while it keeps renewing, nobody takes back what it holds.
-- KEYS[1]: the queue's registry of consumers (sorted set, score: deadline in ms)
-- ARGV[1]: the consumer id   ARGV[2]: how long until its deadline (ms)
-- Reply: 1.
redis.call('ZADD', KEYS[1], now_ms() + tonumber(ARGV[2]), ARGV[1])
return 1
