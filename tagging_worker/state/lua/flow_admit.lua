-- Asks for one API call: the circuit decides first (held while open, or let through as the
-- probe once the cool-down is over), then the pace reserves the caller's slot.
-- KEYS[1]: the circuit (hash)   KEYS[2]: the limiter (hash)
-- ARGV[1]: the caller's token (recorded should it become the probe)   ARGV[2]: the rate limit
--   (req/s)   ARGV[3]: burst   ARGV[4]: the longest wait for a slot (ms)   ARGV[5]: how long a
--   probe may take (ms)
-- Reply: {verdict, wait (ms, as text), code, message}, verdict one of 'go' (wait, then call),
--   'probe' (call now), 'rate' (the slot is beyond the longest wait: nothing reserved) or
--   'open' (code and message: what opened the circuit).
local now = now_ms()
local say, wait, code, message = circuit_admit(KEYS[1], now, ARGV[1], tonumber(ARGV[5]))
if say == 'open' then return {'open', tostring(wait), code, message} end
if say == 'probe' then return {'probe', '0', '', ''} end
local reserved
reserved, wait = pace_reserve(KEYS[2], now, tonumber(ARGV[2]), tonumber(ARGV[3]),
                              tonumber(ARGV[4]))
return {reserved and 'go' or 'rate', tostring(wait), '', ''}
