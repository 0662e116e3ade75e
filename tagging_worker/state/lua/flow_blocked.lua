-- Whether no caller may reach the API now, so workers should stop taking messages.
-- KEYS[1]: the circuit (hash)
-- Reply: 1 while it is open or a probe is under way, else 0.
local now = now_ms()
local c = redis.call('HMGET', KEYS[1], 'state', 'until', 'probe_until')
if c[1] == 'open' then return (now < tonumber(c[2])) and 1 or 0 end
if c[1] == 'half_open' then return (now < tonumber(c[3])) and 1 or 0 end
return 0
