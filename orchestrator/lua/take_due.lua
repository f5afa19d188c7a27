-- Take the delayed messages that are due, for publishing. A taken message moves to the
-- in-flight set (scored by when it was taken) until its publisher confirms it; one whose
-- publisher died is put back by recovery after a while. Every poller may call this at
-- once: each due message is taken by one of them.
-- KEYS: 1 delayed zset, 2 entries hash, 3 in-flight zset
-- ARGV: 1 now, 2 most messages to take
-- Returns {id1, message1, id2, message2, ...}
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
local out = {}
for _, id in ipairs(due) do
  redis.call('ZREM', KEYS[1], id)
  redis.call('ZADD', KEYS[3], ARGV[1], id)
  table.insert(out, id)
  table.insert(out, redis.call('HGET', KEYS[2], id) or '')
end
return out
