-- Gives an event outside any call's ordering (too broken to have a call) its fate, with its
-- dead letter when it has one.
-- KEYS[1]: the event's fates (its record's call's, or its own)   KEYS[2]: outcomes
-- KEYS[3..7] (a dead letter only): the dead letters of the record's call, all dead letters,
--   the record, the dead letters of its reason, of its error code
-- ARGV[1]: outcome   ARGV[2]: fate TTL (s)   ARGV[3]: event id
-- ARGV[4..8] (a dead letter only): record json, reason, the record's call id, error code ('' for
--   none), time of death (ms)
-- Reply: 1, or 0 if the event already had a fate.
if not set_fate(KEYS[1], ARGV[3], ARGV[1], ARGV[2]) then return 0 end
redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
if #KEYS > 2 then
  store_record(KEYS[4], KEYS[5], KEYS[6], KEYS[3], KEYS[7], ARGV[3], ARGV[4], ARGV[5], ARGV[6],
               ARGV[7], ARGV[8])
end
return 1
