-- Stores a dead letter outside an event's processing (an import, an operator's add), then
-- trims the oldest records beyond the limit. An event whose fate here is other than dead is
-- refused: it was replayed and finished since the record was exported. Otherwise the event's
-- fate becomes dead if it had none, so the counters count it once and a replay gives the fate
-- back, and its call's version is kept as long as the record. The indexes of a record it
-- replaces and of the records trimming drops are asked for (see told_keys).
-- KEYS[1]: all dead letters   KEYS[2]: the record   KEYS[3]: the event's fates
-- KEYS[4]: outcomes   KEYS[5]: the call's applied version   KEYS[6]: the call's tags
-- KEYS[7]: the dead letters of the record's reason   KEYS[8]: of its call
-- KEYS[9]: of its error code (not touched without one)   KEYS[10...]: the keys told
-- ARGV[1]: record id   ARGV[2]: record json   ARGV[3]: reason   ARGV[4]: call id
-- ARGV[5]: error code ('' for none)   ARGV[6]: time of death (ms)   ARGV[7]: most records kept
-- ARGV[8]: '1' to leave an existing record alone   ARGV[9]: fate TTL (s)
-- ARGV[10...]: the keys told (a count, then kind and name of each)
-- Reply: {'stored', how many old records were trimmed}, {'exists'} (left alone) or
--        {'settled'} (refused); or {'need', kind, name, ...}.
local told, asked = told_keys(10), {'need'}
local id = ARGV[1]
tell(told, 'rec', id, KEYS[2])
tell(told, 'reason', ARGV[3], KEYS[7])
tell(told, 'call', ARGV[4], KEYS[8])
if ARGV[5] ~= '' then tell(told, 'code', ARGV[5], KEYS[9]) end
if ARGV[8] == '1' and redis.call('EXISTS', KEYS[2]) == 1 then return {'exists'} end
local fate = redis.call('HGET', KEYS[3], id)
if fate and fate ~= 'dead' then return {'settled'} end
local old = redis.call('HMGET', KEYS[2], 'reason', 'call_id', 'code')
ask_index_keys(told, asked, old[1], old[2], old[3])
ask_record_keys(told, asked, trim_ids(KEYS[1], ARGV[7], id))
if #asked > 1 then return asked end
if not fate then
  set_fate(KEYS[3], id, 'dead', ARGV[9])
  redis.call('HINCRBY', KEYS[4], 'dead', 1)
end
unindex_record(told, id, old[1], old[2], old[3])
redis.call('HSET', KEYS[2], 'json', ARGV[2], 'reason', ARGV[3], 'call_id', ARGV[4], 'code', ARGV[5])
redis.call('ZADD', KEYS[1], ARGV[6], id)
redis.call('ZADD', KEYS[7], ARGV[6], id)
redis.call('ZADD', KEYS[8], ARGV[6], id)
if ARGV[5] ~= '' then redis.call('ZADD', KEYS[9], ARGV[6], id) end
redis.call('PERSIST', KEYS[5])
redis.call('PERSIST', KEYS[6])
return {'stored', trim_oldest(told, KEYS[1], ARGV[7])}
