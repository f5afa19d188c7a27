-- Store a new workflow, its steps and its first audit record, all or nothing.
-- KEYS: 1 workflow hash, 2 defs hash, 3 steps hash, 4 audit list, 5 index zset,
--       6 idempotency key ('' when the spec has none), 7 waiting hash, 8 metrics hash
--       (its steps, all pending, count under their class: see transition.lua)
-- ARGV: 1 workflow id, 2 workflow fields (JSON object), 3 step defs (JSON object id->def),
--       4 step records (JSON object id->record), 5 first audit record, 6 its hash,
--       7 submitted_at, 8 ttl seconds for the idempotency key,
--       9 prefix of workflow hash keys (the key of workflow X is ARGV[9] .. X),
--       10 dependency counts of counter steps (JSON object id->count),
--       11 the submission counter key, 12 its stride, 13 places in the queues of
--       concurrency keys (JSON array of [limit base, rank, member, limit JSON]),
--       14 the active limits hash (see flow.lua). The workflow's number is seq; a
--       place is seq * stride + rank, so earlier submissions come first.
-- Returns {'created', id} or {'exists', first_id}.
if KEYS[6] ~= '' then
  local first = redis.call('GET', KEYS[6])
  if first and redis.call('EXISTS', ARGV[9] .. first) == 1 then
    return {'exists', first}
  end
end
if redis.call('EXISTS', KEYS[1]) == 1 then
  return redis.error_reply('workflow ' .. ARGV[1] .. ' already exists')
end
-- Many values per command (a stage of thousands of steps is a handful of commands), in
-- chunks Lua can unpack.
local CHUNK = 4000
local function hset_all(key, map)
  local flat, created = {}, 0
  for id, value in pairs(map) do
    table.insert(flat, id)
    table.insert(flat, value)
    created = created + 1
  end
  for i = 1, #flat, CHUNK do
    redis.call('HSET', key, unpack(flat, i, math.min(i + CHUNK - 1, #flat)))
  end
  return created
end
local fields = cjson.decode(ARGV[2])
fields['audit_tail'] = ARGV[6]
hset_all(KEYS[1], fields)
-- Stored as the caller encoded them: decoding and re-encoding user data in Lua would turn
-- [] into {} and round numbers to 14 digits.
hset_all(KEYS[2], cjson.decode(ARGV[3]))
local created = hset_all(KEYS[3], cjson.decode(ARGV[4]))
redis.call('HINCRBY', KEYS[8], cjson.encode({'steps', fields['priority'], 'pending'}), created)
hset_all(KEYS[7], cjson.decode(ARGV[10]))
local seq = redis.call('INCR', ARGV[11])
redis.call('HSET', KEYS[1], 'seq', seq)
for _, place in ipairs(cjson.decode(ARGV[13])) do
  redis.call('ZADD', place[1] .. ':queue', seq * tonumber(ARGV[12]) + place[2], place[3])
  redis.call('HSET', ARGV[14], place[1], place[4])
end
redis.call('RPUSH', KEYS[4], ARGV[5])
redis.call('ZADD', KEYS[5], ARGV[7], ARGV[1])
if KEYS[6] ~= '' then
  redis.call('SET', KEYS[6], ARGV[1], 'EX', ARGV[8])
end
return {'created', ARGV[1]}
