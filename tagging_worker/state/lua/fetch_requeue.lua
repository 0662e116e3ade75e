-- A held message its worker rejected to be delivered again (Celery does when the process
-- running it died): back behind the others, counted as a crash.
-- KEYS[1]: the consumer's held list   KEYS[2]: the queue   KEYS[3]: the queue's crash counts
-- ARGV[1]: the message (its exact bytes)   ARGV[2]: crashes that quarantine a message
--   ARGV[3]: how long crash counts are kept after the last one (ms)
-- Reply: 1 if it went back, 0 if it was no longer held.
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return 0 end
requeue_counted(ARGV[1], KEYS[2], KEYS[3], ARGV[2], ARGV[3], 'LPUSH')
return 1
