-- Drops the oldest dead letters beyond the retention limit, each with its indexes; the keys of
-- those records and of their indexes are asked for (see told_keys).
-- KEYS[1]: all dead letters   KEYS[2...]: the keys told
-- ARGV[1]: most records kept   ARGV[2...]: the keys told (a count, then kind and name of each)
-- Reply: how many were dropped; or {'need', kind, name, ...}.
local told, asked = told_keys(2), {'need'}
ask_record_keys(told, asked, trim_ids(KEYS[1], ARGV[1]))
if #asked > 1 then return asked end
return trim_oldest(told, KEYS[1], ARGV[1])
