-- Which consumers are past their deadline (read only: on Redis's clock, as the deadlines are).
-- KEYS[1]: the queue's registry of consumers (sorted set, score: deadline in ms)
-- ARGV[1]: the most to list
-- Reply: their consumer ids.
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms(), 'LIMIT', 0, tonumber(ARGV[1]))
