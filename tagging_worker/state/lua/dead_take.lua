-- Removes a dead letter; with a queue, also puts its event back on it in the same step, so a
-- replay is never both on the queue and in the store, nor in neither. A replay also gives the
-- event its ledger entry back (it is no longer dead) and registers its version as pending, as
-- publishing does. The call's version is brought back up to what it was when the event died,
-- should Redis have forgotten it (the tags it wrote are unknown then, so the tags of a lower
-- version are dropped: a repair must not write them), and expires again once the call has no
-- dead letter left. The caller tells the index keys of the record as it read it; if the record
-- changed since, the right ones are asked for (see told_keys).
-- KEYS[1]: all dead letters   KEYS[2]: the record   KEYS[3]: the event's fates (its field: the
--   event id, or the record id when it has none)   KEYS[4]: outcomes
-- KEYS[5]: the pending set the version is registered in ('' for none)
-- KEYS[6]: the call's applied version, KEYS[7]: its tags, KEYS[8]: its dead letters ('' each
--   when the record has no call)
-- KEYS[9]: the queue ('' to only delete)   KEYS[10...]: the keys told
-- ARGV[1]: record id   ARGV[2]: message   ARGV[3]: the record json expected ('' for any)
-- ARGV[4]: event id   ARGV[5]: version   ARGV[6]: the call's version when the event died ('' when
--   unknown)   ARGV[7]: how long the call's keys are kept (s)
-- ARGV[8...]: the keys told (a count, then kind and name of each)
-- Reply: 'taken', 'gone' (no such record) or 'changed' (not the json expected: nothing moved);
--        or {'need', kind, name, ...}.
local told, asked = told_keys(8), {'need'}
local f = redis.call('HMGET', KEYS[2], 'reason', 'call_id', 'json', 'code')
if not f[3] then return 'gone' end
if ARGV[3] ~= '' and f[3] ~= ARGV[3] then return 'changed' end
ask_index_keys(told, asked, f[1], f[2], f[4])
if #asked > 1 then return asked end
redis.call('ZREM', KEYS[1], ARGV[1])
unindex_record(told, ARGV[1], f[1], f[2], f[4])
redis.call('DEL', KEYS[2])
if KEYS[6] ~= '' then
  if ARGV[6] ~= '' and tonumber(redis.call('GET', KEYS[6]) or '-1') < tonumber(ARGV[6]) then
    redis.call('SET', KEYS[6], ARGV[6])
    redis.call('DEL', KEYS[7])
  end
  if redis.call('EXISTS', KEYS[8]) == 0 then
    redis.call('EXPIRE', KEYS[6], ARGV[7])
    redis.call('EXPIRE', KEYS[7], ARGV[7])
  end
end
if KEYS[9] == '' then return 'taken' end
local event = ARGV[4] ~= '' and ARGV[4] or ARGV[1]
if redis.call('HDEL', KEYS[3], event) == 1 then redis.call('HINCRBY', KEYS[4], 'dead', -1) end
redis.call('HINCRBY', KEYS[4], 'replayed', 1)
if KEYS[5] ~= '' then redis.call('ZADD', KEYS[5], ARGV[5], ARGV[4]) end
redis.call('LPUSH', KEYS[9], ARGV[2])
return 'taken'
