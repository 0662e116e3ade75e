-- Feeds one call's signal to the shared pace and the circuit, and says what they are now:
-- the one caller whose signal changed the circuit learns it here, and reports it.
-- KEYS[1]: the circuit (hash)   KEYS[2]: the limiter (hash)
-- ARGV[1]: the signal ('answered', 'throttled', 'failed' or 'systemic')   ARGV[2]: the caller's
--   token (is it the probe?)   ARGV[3]: the rate limit (req/s)   ARGV[4]: the rate floor
--   ARGV[5]: decrease (factor)   ARGV[6]: increase (req/s per s)   ARGV[7]: decrease hold (ms)
--   ARGV[8]: failures in a row that open the circuit   ARGV[9]: cool-down (ms)
--   ARGV[10]: systemic cool-down (ms)   ARGV[11]: the failure's code   ARGV[12]: its message
-- Reply: {transition, state, wait (ms, as text), rate (req/s, as text), kind}: transition ''
--   (no change), 'opened', 'reopened' or 'closed'; state 'closed', 'open' or 'half_open';
--   wait and kind ('transient' or 'systemic') only while not closed.
local now = now_ms()
local signal = ARGV[1]
local rate = pace_record(KEYS[2], now, signal, {
  ceiling = tonumber(ARGV[3]), floor = tonumber(ARGV[4]), decrease = tonumber(ARGV[5]),
  increase = tonumber(ARGV[6]), hold = tonumber(ARGV[7]),
})
local transition, state = circuit_record(KEYS[1], now, signal, ARGV[2], {
  threshold = tonumber(ARGV[8]), cooldown = tonumber(ARGV[9]),
  systemic_cooldown = tonumber(ARGV[10]), code = ARGV[11], message = ARGV[12],
})
local wait, kind = circuit_wait(KEYS[1], now, state)
return {transition, state, tostring(wait), tostring(rate), kind}
