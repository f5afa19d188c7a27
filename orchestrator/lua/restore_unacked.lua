-- Put a message a dead worker had taken back on its queue, as kombu itself does after
-- the visibility timeout, but now. Atomic with the check that it is still unacked, so a
-- message its worker acknowledged in the meantime is left alone.
-- KEYS: 1 kombu's unacked hash, 2 kombu's unacked index zset, 3 the queue's list
-- ARGV: 1 delivery tag, 2 the message marked as redelivered (JSON)
-- Returns 1 if restored, 0 if it was no longer unacked.
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then
  return 0
end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('RPUSH', KEYS[3], ARGV[2])
return 1
