-- Move step messages that waited too long on one class's queue to the consuming end of
-- the next higher class's queue, so they run next there. Each move is all or nothing,
-- and only a message still waiting is moved: one a worker took in the meantime, or that
-- another orchestrator already moved, is not in the source list any more and is skipped,
-- so no message is lost or duplicated.
-- kombu LPUSHes new messages and workers BRPOP from the right, so the oldest messages are
-- near the right end: LREM with count -1 looks from there.
-- KEYS: 1 the source queue's list, 2 the destination queue's list
-- ARGV: pairs of (message as it is on the source list, message to push on the
--       destination); the last pair pushed is the first one taken there
-- Returns one flag per pair: 1 moved, 0 no longer on the source list.
local moved = {}
for i = 1, #ARGV, 2 do
  if redis.call('LREM', KEYS[1], -1, ARGV[i]) == 1 then
    redis.call('RPUSH', KEYS[2], ARGV[i + 1])
    table.insert(moved, 1)
  else
    table.insert(moved, 0)
  end
end
return moved
