-- Feeds one call's signal to the shared pace and the circuit, and says what they are now:
-- the one caller whose signal changed the circuit learns it here, and reports it.
-- KEYS[1]: the circuit (hash)   KEYS[2]: the limiter (hash)
-- ARGV[1]: the signal ('answered', 'throttled', 'failed' or 'systemic')   ARGV[2]: the caller's
--   token (is it the probe?)   ARGV[3]: the call id the request was for
--   ARGV[4]: the rate limit (req/s)   ARGV[5]: the rate floor   ARGV[6]: decrease (factor)
--   ARGV[7]: increase (req/s per s)   ARGV[8]: decrease hold (ms)
--   ARGV[9]: failures in a row that open the circuit   ARGV[10]: distinct calls they must
--   come from   ARGV[11]: cool-down (ms)   ARGV[12]: systemic cool-down (ms)
--   ARGV[13]: the failure's code   ARGV[14]: its message
-- Reply: {transition, state, wait (ms, as text), rate (req/s, as text), kind}: transition ''
--   (no change), 'opened', 'reopened' or 'closed'; state 'closed', 'open' or 'half_open';
--   wait and kind ('transient' or 'systemic') only while not closed.
local now = now_ms()
local signal = ARGV[1]
local rate = pace_record(KEYS[2], now, signal, {
  ceiling = tonumber(ARGV[4]), floor = tonumber(ARGV[5]), decrease = tonumber(ARGV[6]),
  increase = tonumber(ARGV[7]), hold = tonumber(ARGV[8]),
})
local transition, state = circuit_record(KEYS[1], now, signal, ARGV[2], {
  call = ARGV[3], threshold = tonumber(ARGV[9]), min_calls = tonumber(ARGV[10]),
  cooldown = tonumber(ARGV[11]), systemic_cooldown = tonumber(ARGV[12]), code = ARGV[13],
  message = ARGV[14],
})
local wait, kind = circuit_wait(KEYS[1], now, state)
return {transition, state, tostring(wait), tostring(rate), kind}
