-- Closes the circuit now, whatever its state, and forgets any run of failures: an operator's
-- word (`tagging-worker circuit reset`), or a check call the API answered on its merits
-- (`circuit probe`). Workers see it at their next look (`flow_blocked.lua`) and take messages
-- again; a probe still out finds the circuit closed, and its answer counts as any other's.
-- The circuit also ends the waits it imposed: events it held back, or whose calls failed while
-- it was open, were parked until about the end of its cool-down (a little later, spread), so
-- every delayed retry due before the end of one more cool-down comes due now, for the
-- workers' housekeeping to move onto the queue as usual.
-- KEYS[1]: the circuit (hash)   KEYS[2]: the delayed retries (message -> due time, ms)
-- Reply: {state, n}: the state it was in ('closed', 'open' or 'half_open') and how many
--   delayed retries came due now.
local c = redis.call('HMGET', KEYS[1], 'state', 'until', 'opened_at')
local state = c[1] or 'closed'
redis.call('DEL', KEYS[1])
if state == 'closed' then return {state, 0} end
local now = now_ms()
local ends = tonumber(c[2]) or now
local horizon = ends + (ends - (tonumber(c[3]) or ends))
local held = redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. now, horizon)
for _, message in ipairs(held) do
  redis.call('ZADD', KEYS[2], 'XX', now, message)
end
return {state, #held}
