-- Keep the message of a step of a parked workflow until the workflow is resumed; in
-- the same step as reading the workflow's state, so a message is never kept after the
-- workflow was resumed (the resumer publishes what it finds, then nothing more comes).
-- KEYS: 1 workflow hash, 2 parked messages hash
-- ARGV: 1 step id, 2 message JSON
-- Returns 1 if kept, 0 if the workflow is not parked (the step may run).
if redis.call('HGET', KEYS[1], 'state') ~= 'parked' then
  return 0
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
return 1
