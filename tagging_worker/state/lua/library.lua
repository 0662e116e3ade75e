-- Functions shared by the scripts in this folder (scripts.py puts this file in front of each):
-- the clock, the pace and the circuit (flow), the counted requeue (fetch), the ask protocol,
-- versions, in-doubt writes and dead-letter records (ordering and dead letters).

-- Redis's own clock (ms): every host on one timeline, whatever its own clock says.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- The shared pace (flow): a hash with the current `rate` (req/s), the theoretical arrival time
-- `tat` (ms) of the next free slot, and what the adaptive rate keeps between signals.

-- The pace's rate: the stored one, never above the limit (a lowered limit applies at once).
local function pace_rate(stored, ceiling)
  return math.min(tonumber(stored) or ceiling, ceiling)
end

-- Reserves the next slot, `burst` slots being free at once after a quiet spell. Returns true
-- and the wait (ms) until the slot, or false and that wait when it is beyond `max_wait` (then
-- nothing is reserved).
local function pace_reserve(limiter, now, ceiling, burst, max_wait)
  local l = redis.call('HMGET', limiter, 'rate', 'tat')
  local interval = 1000 / pace_rate(l[1], ceiling)
  local tat = math.max(tonumber(l[2]) or now, now)
  local wait = math.max(tat - (burst - 1) * interval - now, 0)
  if wait > max_wait then return false, wait end
  redis.call('HSET', limiter, 'tat', tat + interval)
  redis.call('PEXPIRE', limiter, 86400000)
  return true, wait
end

-- A throttling answer cuts the pace once per pace: slots reserved at the old pace keep going
-- out until `tat` and their answers come back a moment later (`hold`); they count once, in one
-- cut, or one burst of refusals would cut many times. The share refused since the last cut
-- says how far over the quota the pace it was sent at is: the cut goes to that estimate when
-- it is below the usual step, never by more than half. Returns the rate after it.
local function pace_cut(limiter, now, rate, l, p)
  if now < (tonumber(l.hold_until) or 0) then return rate end
  local answered, throttled = tonumber(l.answered) or 0, (tonumber(l.throttled) or 0) + 1
  local cut = rate * p.decrease
  if answered + throttled >= 10 then
    local estimate = (tonumber(l.sent_at) or rate) * answered / (answered + throttled)
    cut = math.max(rate / 2, math.min(cut, estimate))
  end
  local hold_until = math.max(tonumber(l.tat) or now, now) + p.hold
  redis.call('HSET', limiter, 'rate', math.max(p.floor, cut), 'sent_at', rate,
             'hold_until', hold_until, 'grown_at', now, 'answered', 0, 'throttled', 0)
  return math.max(p.floor, cut)
end

-- Sustained success adds `increase` req/s per second (at most one second's worth per answer),
-- never above the limit. Returns the rate after it.
local function pace_grow(limiter, now, rate, l, p)
  local since = math.min(math.max(now - (tonumber(l.grown_at) or now), 0), 1000)
  rate = math.min(p.ceiling, rate + p.increase * since / 1000)
  redis.call('HSET', limiter, 'rate', rate, 'grown_at', now)
  return rate
end

-- Feeds one call's signal to the pace. `p`: ceiling and floor (req/s), decrease (factor),
-- increase (req/s per s), hold (ms). Returns the rate after it.
local function pace_record(limiter, now, signal, p)
  local f = redis.call('HMGET', limiter, 'rate', 'grown_at', 'hold_until', 'tat', 'sent_at',
                       'answered', 'throttled')
  local l = {grown_at = f[2], hold_until = f[3], tat = f[4], sent_at = f[5], answered = f[6],
             throttled = f[7]}
  local rate = pace_rate(f[1], p.ceiling)
  if signal == 'answered' or signal == 'throttled' then
    redis.call('HINCRBY', limiter, signal, 1)
  end
  if signal == 'throttled' then
    rate = pace_cut(limiter, now, rate, l, p)
  elseif signal == 'answered' and rate < p.ceiling then
    rate = pace_grow(limiter, now, rate, l, p)
  end
  redis.call('PEXPIRE', limiter, 86400000)
  return rate
end

-- The circuit (flow): a hash with `state` ('closed' when absent, 'open' or 'half_open'), the
-- cool-down's end `until` (ms), the probe's token and `probe_until`, the `failures` in a row
-- and the distinct `calls` they came from (8 hex digits of each call id's SHA-1, side by side,
-- at most as many as it takes to open), and the `kind`, `code` and `message` of what opened it.

-- The circuit's say on a caller: 'closed' (the pace decides); 'open', the wait (ms) before
-- looking again, and the code and message that opened it; or 'probe' (the cool-down is over
-- and this caller goes as the probe, which is recorded).
local function circuit_admit(circuit, now, token, probe_ms)
  local c = redis.call('HMGET', circuit, 'state', 'until', 'probe_until', 'code', 'message')
  local state = c[1] or 'closed'
  if state == 'closed' then return 'closed' end
  local deadline = tonumber((state == 'open') and c[2] or c[3]) or 0
  if now < deadline then
    -- while a probe is out, look again soon: its answer usually takes well under a second
    local wait = (state == 'open') and (deadline - now) or math.min(deadline - now, 1000)
    return 'open', wait, c[4] or '', c[5] or ''
  end
  redis.call('HSET', circuit, 'state', 'half_open', 'probe', token, 'probe_until', now + probe_ms)
  return 'probe'
end

-- Opens the circuit for `cooldown` ms, keeping what opened it.
local function circuit_open(circuit, now, kind, cooldown, code, message)
  redis.call('HSET', circuit, 'state', 'open', 'until', now + cooldown, 'kind', kind,
             'code', code, 'message', message, 'opened_at', now)
  redis.call('HDEL', circuit, 'probe', 'probe_until', 'failures', 'calls')
end

-- Counts one more transient failure in the run, from call `call`. Returns whether the run is
-- now evidence that the API is down: `threshold` failures from `min_calls` distinct calls. One
-- call the API keeps failing (its own retries, nothing else in flight) says nothing about the
-- others; a collision of short hashes only ever asks for one call more.
local function circuit_fail(circuit, call, threshold, min_calls)
  local f = redis.call('HMGET', circuit, 'failures', 'calls')
  local failures, calls = (tonumber(f[1]) or 0) + 1, f[2] or ''
  local id = string.sub(redis.sha1hex(call), 1, 8)
  local known = #calls >= 8 * min_calls -- enough calls already: no need to tell them apart
  for i = 1, #calls, 8 do
    known = known or string.sub(calls, i, i + 7) == id
  end
  if not known then calls = calls .. id end
  redis.call('HSET', circuit, 'failures', failures, 'calls', calls)
  return failures >= threshold and #calls >= 8 * min_calls
end

-- Feeds one call's signal to the circuit: a run of failures opens it once it is evidence
-- (circuit_fail), a systemic failure at once (and lengthens an outage's cool-down), the
-- probe's answer closes it and the probe's failure reopens it. `r`: the call id, threshold,
-- min_calls, cooldown and systemic_cooldown (ms), and the failure's code and message. Returns
-- the transition ('' when none, 'opened', 'reopened' or 'closed') and the state after it.
local function circuit_record(circuit, now, signal, token, r)
  local c = redis.call('HMGET', circuit, 'state', 'probe', 'failures', 'kind', 'until')
  local state = c[1] or 'closed'
  local is_probe = state == 'half_open' and c[2] == token
  if signal == 'answered' or signal == 'throttled' then
    -- While open, an answer to a request sent before it opened proves nothing: only a call
    -- let through after the cool-down closes it.
    if state == 'half_open' then
      redis.call('DEL', circuit)
      return 'closed', 'closed'
    elseif c[3] then
      redis.call('HDEL', circuit, 'failures', 'calls')
    end
  elseif signal == 'failed' then
    if state == 'closed' then
      if circuit_fail(circuit, r.call, r.threshold, r.min_calls) then
        circuit_open(circuit, now, 'transient', r.cooldown, r.code, r.message)
        return 'opened', 'open'
      end
    elseif is_probe then
      circuit_open(circuit, now, 'transient', r.cooldown, r.code, r.message)
      return 'reopened', 'open'
    end
  elseif signal == 'systemic' then
    if state == 'closed' or (state == 'open' and c[4] ~= 'systemic') then
      circuit_open(circuit, now, 'systemic', r.systemic_cooldown, r.code, r.message)
      return 'opened', 'open'
    elseif is_probe then
      circuit_open(circuit, now, 'systemic', r.systemic_cooldown, r.code, r.message)
      return 'reopened', 'open'
    end
  end
  return '', state
end

-- While the circuit is not closed: how long (ms) until the next probe may go (open), or until
-- callers look again (a probe out: soon), and the kind of what opened it. Closed: 0 and ''.
local function circuit_wait(circuit, now, state)
  if state == 'closed' then return 0, '' end
  local f = redis.call('HMGET', circuit, 'until', 'probe_until', 'kind')
  local wait
  if state == 'open' then
    wait = math.max((tonumber(f[1]) or now) - now, 0)
  else
    wait = math.min(math.max((tonumber(f[2]) or now) - now, 0), 1000)
  end
  return wait, f[3] or ''
end

-- Puts one message back on the queue (fetch), counting that a consumer failed it (its holder
-- died, or a worker lost the process running it). The count lives in a hash by the message's
-- SHA-1 that expires `ttl` ms after the last failure; the failure that reaches `limit` puts
-- the message back as a quarantine wrapper instead, `{"quarantined": {"crashes": n}, "item":
-- <the message>}`, which the consumer turns into a dead letter without decoding the message
-- that keeps killing workers. `push`: 'RPUSH' (taken next) or 'LPUSH' (behind the others).
local function requeue_counted(raw, queue, counts, limit, ttl, push)
  local digest = redis.sha1hex(raw)
  local crashes = redis.call('HINCRBY', counts, digest, 1)
  redis.call('PEXPIRE', counts, ttl)
  if crashes >= tonumber(limit) then
    redis.call('HDEL', counts, digest)
    raw = cjson.encode({quarantined = {crashes = crashes}, item = raw})
  end
  redis.call(push, queue, raw)
end

-- The ask protocol. Every key a script touches arrives in KEYS; a script that finds out only as
-- it runs which keys it needs (the records trimming drops and their indexes) is told them. The caller appends them to KEYS and names them in
-- ARGV from a set place on: their count n, then the kind ('rec', 'reason', 'call', 'code') and name (event or record id, reason, call id, code) of each, in the order of the
-- last n KEYS. Before it writes anything, the script adds what it needs and was not told to
-- `asked`, a reply {'need', kind, name, ...} it returns if anything is in it; the caller then
-- calls again with those keys as well.

-- The keys told, by kind and name; `at` is where their count is in ARGV.
local function told_keys(at)
  local told, n = {}, tonumber(ARGV[at])
  local first = #KEYS - n
  for i = 1, n do
    local kind, name = ARGV[at + 2 * i - 1], ARGV[at + 2 * i]
    told[kind] = told[kind] or {}
    told[kind][name] = KEYS[first + i]
  end
  return told
end

-- Adds a key the script has among its own KEYS to those told.
local function tell(told, kind, name, key)
  told[kind] = told[kind] or {}
  told[kind][name] = key
end

-- The key told for `kind` and `name`; nil, and it is asked for, when there is none.
local function told_key(told, asked, kind, name)
  local key = told[kind] and told[kind][name]
  if not key then
    asked[#asked + 1] = kind
    asked[#asked + 1] = name
  end
  return key
end

-- The key told for `kind` and `name`, once the script has made sure it was told (a script
-- that gets here without it is wrong: it must ask before it writes).
local function known_key(told, kind, name)
  local key = told[kind] and told[kind][name]
  if not key then error('no ' .. kind .. ' key was told for ' .. name) end
  return key
end

-- A version outlives every dead letter of its call (nothing else remembers that a replay of an
-- older event would regress it); otherwise it lasts `ttl`.
local function keep_version(applied, tags, dead_by_call, ttl)
  if redis.call('EXISTS', dead_by_call) == 1 then
    redis.call('PERSIST', applied)
    redis.call('PERSIST', tags)
  else
    redis.call('EXPIRE', applied, ttl)
    redis.call('EXPIRE', tags, ttl)
  end
end

-- Files the call in the settle index by when its first write of unknown outcome can no longer
-- land, or takes it out when none is left.
local function reindex_settle(unsettled, index, call)
  local first = redis.call('ZRANGE', unsettled, 0, 0, 'WITHSCORES')
  if #first == 0 then
    redis.call('ZREM', index, call)
  else
    redis.call('ZADD', index, first[2], call)
  end
end

-- Fates: a hash of event id -> 'applied', 'stale', 'superseded' or 'dead', one per call (the
-- fates of its events, so a script holding the call's keys holds every fate it may need) or
-- one per event that has no call. Each is set once; the hash lasts `ttl` after its last write.

-- Gives `event` its fate unless it has one; whether it did.
local function set_fate(fates, event, fate, ttl)
  if redis.call('HSETNX', fates, event, fate) == 0 then return false end
  redis.call('EXPIRE', fates, ttl)
  return true
end

-- Members of `unsettled` are '<version>:<writer's token>:<event id>' (no event for a repair,
-- which writes a version already applied). An entry whose event has no fate yet is that
-- event's business: it will be written again or die. A newer one may have landed, so nothing
-- older may be written meanwhile; it is settled only once its event has finished.
local function in_doubt_entry(member)
  local v, event = string.match(member, '^([^:]*):[^:]*:(.*)$')
  return v, event
end

-- Whether an in-doubt entry's event has finished (a repair's always has).
local function in_doubt_finished(fates, event)
  return event == '' or redis.call('HEXISTS', fates, event) == 1
end

-- Whether a version newer than `version` is in doubt with its event unfinished.
local function newer_in_doubt(fates, unsettled, version)
  for _, member in ipairs(redis.call('ZRANGE', unsettled, 0, -1)) do
    local v, event = in_doubt_entry(member)
    if tonumber(v) > version and not in_doubt_finished(fates, event) then return true end
  end
  return false
end

-- The entries that can no longer land by `now` and whose events have finished.
local function settleable(fates, unsettled, now)
  local found = {}
  for _, member in ipairs(redis.call('ZRANGEBYSCORE', unsettled, '-inf', now)) do
    local _, event = in_doubt_entry(member)
    if in_doubt_finished(fates, event) then found[#found + 1] = member end
  end
  return found
end

-- The next default version of a call: Redis's clock (ms), above the last one the call was given.
local function next_version(clock, ttl)
  local v = math.max(now_ms(), tonumber(redis.call('GET', clock) or '-1') + 1)
  local text = string.format('%.0f', v)
  redis.call('SET', clock, text, 'EX', ttl)
  return text
end

-- Dead letters: a record is a hash (`json`, and `reason`, `call_id` and `code` copied out of
-- it), indexed by time of death (all), reason, call and, when it has one, the error code it
-- died of; every script keeps all four right.

-- Stores a new record (an existing one is left as it is: a second death of the same event is
-- refused by its fate before this runs).
local function store_record(all, record, by_reason, by_call, by_code, id, json, reason, call,
                            code, died_at)
  if redis.call('EXISTS', record) == 1 then return end
  redis.call('HSET', record, 'json', json, 'reason', reason, 'call_id', call, 'code', code)
  redis.call('ZADD', all, died_at, id)
  redis.call('ZADD', by_reason, died_at, id)
  redis.call('ZADD', by_call, died_at, id)
  if code ~= '' then redis.call('ZADD', by_code, died_at, id) end
end

-- Asks for the index keys of a record's fields (as HMGET gives them: false when missing).
local function ask_index_keys(told, asked, reason, call, code)
  if reason then told_key(told, asked, 'reason', reason) end
  if call then told_key(told, asked, 'call', call) end
  if code and code ~= '' then told_key(told, asked, 'code', code) end
end

-- Takes record `id` out of the indexes of its fields (their keys told).
local function unindex_record(told, id, reason, call, code)
  if reason then
    local by_reason = known_key(told, 'reason', reason)
    redis.call('ZREM', by_reason, id)
  end
  if call then
    local by_call = known_key(told, 'call', call)
    redis.call('ZREM', by_call, id)
  end
  if code and code ~= '' then
    local by_code = known_key(told, 'code', code)
    redis.call('ZREM', by_code, id)
  end
end

-- The ids trimming to `max` records may drop, once `adding` (a record about to be stored,
-- whose keys the script holds) is counted in: a few more than it will drop, never fewer.
local function trim_ids(all, max, adding)
  local excess = redis.call('ZCARD', all) - tonumber(max)
  if adding and not redis.call('ZSCORE', all, adding) then excess = excess + 1 end
  if excess <= 0 then return {} end
  local ids = {}
  for _, id in ipairs(redis.call('ZRANGE', all, 0, excess)) do
    if id ~= adding and #ids < excess then ids[#ids + 1] = id end
  end
  return ids
end

-- Asks for the keys of records `ids` and, once those are told, of their indexes.
local function ask_record_keys(told, asked, ids)
  for _, id in ipairs(ids) do
    local record = told_key(told, asked, 'rec', id)
    if record then
      local f = redis.call('HMGET', record, 'reason', 'call_id', 'code')
      ask_index_keys(told, asked, f[1], f[2], f[3])
    end
  end
end

-- Drops the oldest records beyond `max` (their keys told: see trim_ids); returns how many.
local function trim_oldest(told, all, max)
  local excess = redis.call('ZCARD', all) - tonumber(max)
  if excess <= 0 then return 0 end
  local trimmed = 0
  for _, id in ipairs(redis.call('ZRANGE', all, 0, excess - 1)) do
    local record = known_key(told, 'rec', id)
    local f = redis.call('HMGET', record, 'reason', 'call_id', 'code')
    redis.call('ZREM', all, id)
    unindex_record(told, id, f[1], f[2], f[3])
    redis.call('DEL', record)
    trimmed = trimmed + 1
  end
  return trimmed
end
