-- Takes one message published with a priority (kombu keeps those in lists of their own) into
-- the consumer's held list, from the first of those lists that has one.
-- KEYS[1]: the consumer's held list   KEYS[2..n]: the queue's priority lists, in kombu's order
-- Reply: the message, or nil when they are all empty.
for i = 2, #KEYS do
  local message = redis.call('LMOVE', KEYS[i], KEYS[1], 'RIGHT', 'LEFT')
  if message then return message end
end
return false
