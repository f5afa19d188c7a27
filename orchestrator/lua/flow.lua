-- Shared limits: token buckets, leased semaphores, ordered locks and circuit breakers,
-- and the steps waiting for them. One script, so that deciding, taking and parking are
-- one atomic step: a release falling between the refusal of a step and its parking would
-- otherwise leave the step waiting for a wake-up that has already happened.
--
-- A limit is a JSON object {base, concurrency, rate, burst, failures, open_s, ordered}.
-- Its keys: base..':state' (hash: tokens, ts, circuit, open_until, failures, probe,
-- probe_until), ':holders' (zset: member -> lease expiry), ':owners' (hash: member ->
-- worker incarnation), ':claims' (hash: member -> the claim, one try of one copy of the
-- step's message, that took the permit), ':queue' (zset: waiting member -> order score),
-- ':parked' (hash: member -> id of its message, kept in the delayed entries until a
-- release wakes it).
-- A waiter with a due time (a token bucket's next token, a circuit's reopening) is in
-- the delayed zset instead of ':parked', and keeps its place in ':queue' meanwhile.
-- Key names travel in ARGV, so this runs on one Redis (not on a cluster).
-- A member is "<workflow>/<step>". Times are Redis's clock, the same for every host.
--
-- KEYS: 1 delayed zset, 2 delayed entries hash, 3 active limits hash (base -> limit),
--       4 metrics hash (refusals counted per resource, or per kind for keys and tenants)
-- ARGV: 1 operation, 2 limits (JSON array), 3 prefix of worker heartbeat keys, then:
--   acquire  4 member, 5 worker incarnation, 6 lease seconds, 7 place in ordered queues
--            (submission order; other queues are in order of arrival), 8 message id,
--            9 message JSON to publish when woken, 10 the same to publish when woken
--            from a tenant's cap ('' = the same as 9): a tenant's step goes back in
--            line behind the other tenants' steps, others go to the front,
--            11 claim ('' = none), 12 the claim of the step's last attempt, whose
--            permit this one may take over (it ended, or was lost)
--            -> {'ok'} or {'wait', n (1-based limit), reason, due ('' = until woken),
--                first member of that limit's queue, a holder of it}
--                or {'held', n}: another claim of the same member, still alive, holds
--                that permit (two copies of one step's message); nothing was changed
--   release  4 member, 5 circuit verdict ('success', 'failure' or ''),
--            6 order score to wait again with in ordered queues ('' = none),
--            7 claim: the permit goes back only if this claim holds it ('' = whoever
--            holds it)                                                       -> {'ok'}
--   expired  -> flat list of limit number, member, incarnation for each permit whose
--               lease ran out or whose worker's heartbeat is gone
--   reclaim  4 JSON array of [limit number, member]: take those permits back if still
--            expired, then wake                                             -> {'ok'}
--   drop     4 JSON array of [limit number, member]: take those waiters out (their steps
--            ended without running), then wake                              -> {'ok'}
--   wake     wake the waiters that can run now; forget limits nobody uses   -> {'ok'}
local delayed, entries, active, metrics = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local op = ARGV[1]
local limits = cjson.decode(ARGV[2])
local alive_prefix = ARGV[3]
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local WAKE_MAX = 200
local RATE_LEAD_S = 0.03

local function key(limit, part)
  return limit.base .. ':' .. part
end

local function num(value)
  if value == nil or value == cjson.null then
    return nil
  end
  return tonumber(value)
end

local function tokens_now(limit)
  local state = redis.call('HMGET', key(limit, 'state'), 'tokens', 'ts')
  local burst = num(limit.burst) or 1
  local tokens = tonumber(state[1]) or burst
  local ts = tonumber(state[2]) or now
  return math.min(burst, tokens + math.max(0, now - ts) * num(limit.rate))
end

local function circuit_of(limit)
  local c = redis.call('HMGET', key(limit, 'state'), 'circuit', 'open_until', 'probe',
                       'probe_until')
  return c[1] or 'closed', tonumber(c[2]) or 0, c[3] or '', tonumber(c[4]) or 0
end

local function open_circuit(limit, at)
  redis.call('HSET', key(limit, 'state'), 'circuit', 'open', 'open_until', at,
             'failures', 0, 'probe', '')
end

-- How many wait before the member in this limit's queue. A member that finds nobody
-- waiting does not join: most steps pass a limit without touching its queue.
local function rank_in(limit, member, score)
  local queue = key(limit, 'queue')
  local rank = redis.call('ZRANK', queue, member)
  if rank then
    return rank
  end
  if redis.call('ZCARD', queue) == 0 then
    return 0
  end
  redis.call('ZADD', queue, score, member)
  return redis.call('ZRANK', queue, member)
end

-- Whether the member may take this limit now; if not, why, and when to look again.
-- Those ahead in the queue are served first: capacity is kept for each of them.
local function check(limit, member, score)
  local rank = rank_in(limit, member, score)
  local probe = false
  if num(limit.failures) then
    local circuit, open_until, prober, probe_until = circuit_of(limit)
    if circuit == 'open' and now < open_until then
      return false, 'circuit open', (rank == 0) and open_until or nil
    end
    if circuit == 'half_open' and prober ~= member and probe_until > now then
      return false, 'circuit half-open, a probe runs', nil
    end
    if circuit ~= 'closed' and prober ~= member then
      if rank > 0 then
        return false, 'circuit half-open', nil
      end
      probe = true
    end
  end
  local concurrency = num(limit.concurrency)
  if concurrency and not redis.call('ZSCORE', key(limit, 'holders'), member) then
    local free = concurrency - redis.call('ZCARD', key(limit, 'holders'))
    if rank >= free then
      return false, 'concurrency', nil
    end
  end
  local rate = num(limit.rate)
  if rate then
    local tokens = tokens_now(limit)
    if tokens < rank + 1 then
      -- Due a little before its token: publishing and the queue take that long, and a
      -- waiter that arrives early only looks once more.
      return false, 'rate', now + math.max((rank + 1 - tokens) / rate - RATE_LEAD_S, 0.002)
    end
  end
  return true, nil, nil, probe
end

-- Let a parked member go at ``due``: its message moves to the delayed zset.
local function schedule(limit, member, due)
  local parked = key(limit, 'parked')
  local id = redis.call('HGET', parked, member)
  if id then
    redis.call('HDEL', parked, member)
    redis.call('ZADD', delayed, due, id)
  end
end

-- Forget a member's parked message (it was a duplicate, or its step ended).
local function unpark(limit, member)
  local parked = key(limit, 'parked')
  local id = redis.call('HGET', parked, member)
  if id then
    redis.call('HDEL', parked, member)
    redis.call('HDEL', entries, id)
    redis.call('ZREM', delayed, id)
  end
end

local function park(limit, member, score, id, message, due)
  local queue = key(limit, 'queue')
  if not redis.call('ZSCORE', queue, member) then
    redis.call('ZADD', queue, score, member)
  end
  unpark(limit, member)
  redis.call('HSET', entries, id, message)
  if due then
    redis.call('ZADD', delayed, due, id)
  else
    redis.call('HSET', key(limit, 'parked'), member, id)
  end
  redis.call('HSET', active, limit.base, cjson.encode(limit))
end

-- Wake as many waiters, first in line first, as can run now: no more, so a refilled
-- bucket or a freed permit does not send every waiter at it at once.
local function wake(limit)
  local queue = key(limit, 'queue')
  local n = WAKE_MAX
  if num(limit.failures) then
    local circuit, open_until, _, probe_until = circuit_of(limit)
    if circuit == 'half_open' and probe_until <= now then
      -- The probe's worker is gone: the next in line probes at once.
      open_circuit(limit, now)
      circuit, open_until = 'open', now
    end
    if circuit == 'open' then
      local head = redis.call('ZRANGE', queue, 0, 0)
      if head[1] then
        schedule(limit, head[1], math.max(open_until, now))
      end
      return
    end
    if circuit == 'half_open' then
      return
    end
  end
  local concurrency = num(limit.concurrency)
  if concurrency then
    n = math.min(n, concurrency - redis.call('ZCARD', key(limit, 'holders')))
  end
  if num(limit.rate) then
    n = math.min(n, math.max(1, math.floor(tokens_now(limit))))
  end
  if n <= 0 then
    return
  end
  for _, member in ipairs(redis.call('ZRANGE', queue, 0, n - 1)) do
    schedule(limit, member, now)
  end
end

local function forget_if_idle(limit)
  if redis.call('ZCARD', key(limit, 'holders')) > 0 or redis.call('ZCARD', key(limit, 'queue')) > 0 then
    return
  end
  if num(limit.failures) and circuit_of(limit) ~= 'closed' then
    return
  end
  redis.call('HDEL', active, limit.base)
end

local function expired(limit, member)
  local lease = redis.call('ZSCORE', key(limit, 'holders'), member)
  if not lease then
    return false
  end
  if tonumber(lease) < now then
    return true
  end
  local owner = redis.call('HGET', key(limit, 'owners'), member)
  return owner and redis.call('EXISTS', alive_prefix .. owner) == 0
end

-- Whether a claim other than ``claim`` (and ``replaces``) holds the member's permit and
-- is alive. A step's copies are one member: a copy that shared the permit of another
-- would run beside it uncounted, and its release would free the permit the other runs on.
local function held_by_another(limit, member, claim, replaces)
  if claim == '' or not redis.call('ZSCORE', key(limit, 'holders'), member) then
    return false
  end
  local holder = redis.call('HGET', key(limit, 'claims'), member)
  return holder and holder ~= claim and holder ~= replaces and not expired(limit, member)
end

local function take_back(limit, member)
  redis.call('ZREM', key(limit, 'holders'), member)
  redis.call('HDEL', key(limit, 'owners'), member)
  redis.call('HDEL', key(limit, 'claims'), member)
  if num(limit.failures) then
    local circuit, _, prober = circuit_of(limit)
    if circuit == 'half_open' and prober == member then
      open_circuit(limit, now)
    end
  end
end

local function settle_circuit(limit, member, verdict)
  local circuit, _, prober = circuit_of(limit)
  local state = key(limit, 'state')
  if circuit == 'half_open' and prober == member then
    if verdict == 'success' then
      redis.call('HSET', state, 'circuit', 'closed', 'failures', 0, 'probe', '')
    elseif verdict == 'failure' then
      open_circuit(limit, now + num(limit.open_s))
    else
      open_circuit(limit, now)  -- ended without a verdict: the next in line probes
    end
  elseif circuit == 'closed' then
    if verdict == 'success' then
      redis.call('HSET', state, 'failures', 0)
    elseif verdict == 'failure' then
      if redis.call('HINCRBY', state, 'failures', 1) >= num(limit.failures) then
        open_circuit(limit, now + num(limit.open_s))
        redis.call('HSET', active, limit.base, cjson.encode(limit))
      end
    end
  end
end

local function pairs_of(raw)
  local out = {}
  for _, pair in ipairs(cjson.decode(raw)) do
    table.insert(out, {limits[pair[1]], pair[2]})
  end
  return out
end

if op == 'acquire' then
  local member, incarnation, lease = ARGV[4], ARGV[5], tonumber(ARGV[6])
  local order = ARGV[7] ~= '' and tonumber(ARGV[7]) or now
  local claim, replaces = ARGV[11] or '', ARGV[12] or ''
  for i, limit in ipairs(limits) do
    if num(limit.concurrency) and held_by_another(limit, member, claim, replaces) then
      return {'held', i}
    end
  end
  local probes = {}
  local function score_in(limit)
    return limit.ordered and order or now
  end
  for i, limit in ipairs(limits) do
    local ok, reason, due, probe = check(limit, member, score_in(limit))
    if not ok then
      -- It waits in this limit only; in the others it gives up its place, or it would
      -- hold up those behind it there without running.
      for j, other in ipairs(limits) do
        if j ~= i and not other.ordered then
          redis.call('ZREM', key(other, 'queue'), member)
          unpark(other, member)
        end
      end
      local message = ARGV[9]
      if limit.kind == 'tenant' and ARGV[10] ~= '' then
        message = ARGV[10]
      end
      park(limit, member, score_in(limit), ARGV[8], message, due)
      -- A key's value or a tenant's name would make a metric label per value: count
      -- those by kind.
      local label = limit.kind == 'resource' and limit.name or limit.kind
      redis.call('HINCRBY', metrics, cjson.encode({'deferred', label, reason}), 1)
      local head = redis.call('ZRANGE', key(limit, 'queue'), 0, 0)
      local holder = redis.call('ZRANGE', key(limit, 'holders'), 0, 0)
      return {'wait', i, reason, due and tostring(due) or '', head[1] or '', holder[1] or ''}
    end
    if probe then
      table.insert(probes, limit)
    end
  end
  for _, limit in ipairs(limits) do
    if num(limit.concurrency) then
      redis.call('ZADD', key(limit, 'holders'), now + lease, member)
      redis.call('HSET', key(limit, 'owners'), member, incarnation)
      if claim ~= '' then
        redis.call('HSET', key(limit, 'claims'), member, claim)
      else
        redis.call('HDEL', key(limit, 'claims'), member)
      end
      redis.call('HSET', active, limit.base, cjson.encode(limit))
    end
    if num(limit.rate) then
      redis.call('HSET', key(limit, 'state'), 'tokens', tokens_now(limit) - 1, 'ts', now)
    end
    redis.call('ZREM', key(limit, 'queue'), member)
    unpark(limit, member)
  end
  for _, limit in ipairs(probes) do
    redis.call('HSET', key(limit, 'state'), 'circuit', 'half_open', 'probe', member,
               'probe_until', now + lease)
    redis.call('HSET', active, limit.base, cjson.encode(limit))
  end
  return {'ok'}
elseif op == 'release' then
  local member, verdict, again, claim = ARGV[4], ARGV[5], ARGV[6], ARGV[7] or ''
  for _, limit in ipairs(limits) do
    local holder = redis.call('HGET', key(limit, 'claims'), member)
    if claim == '' or not holder or holder == claim then
      redis.call('ZREM', key(limit, 'holders'), member)
      redis.call('HDEL', key(limit, 'owners'), member)
      redis.call('HDEL', key(limit, 'claims'), member)
    end
    redis.call('ZREM', key(limit, 'queue'), member)
    unpark(limit, member)
    if num(limit.failures) then
      settle_circuit(limit, member, verdict)
    end
    if limit.ordered and again ~= '' then
      -- A retry keeps its place: the next attempt still comes before later submissions.
      redis.call('ZADD', key(limit, 'queue'), tonumber(again), member)
    end
    wake(limit)
    forget_if_idle(limit)
  end
  return {'ok'}
elseif op == 'expired' then
  local out = {}
  for i, limit in ipairs(limits) do
    local holders = redis.call('ZRANGE', key(limit, 'holders'), 0, -1)
    for _, member in ipairs(holders) do
      if expired(limit, member) then
        table.insert(out, i)
        table.insert(out, member)
        table.insert(out, redis.call('HGET', key(limit, 'owners'), member) or '')
      end
    end
  end
  return out
elseif op == 'reclaim' or op == 'drop' then
  for _, pair in ipairs(pairs_of(ARGV[4])) do
    local limit, member = pair[1], pair[2]
    if op == 'drop' then
      redis.call('ZREM', key(limit, 'queue'), member)
      unpark(limit, member)
    elseif expired(limit, member) then
      take_back(limit, member)
    end
  end
  for _, limit in ipairs(limits) do
    wake(limit)
    forget_if_idle(limit)
  end
  return {'ok'}
elseif op == 'wake' then
  for _, limit in ipairs(limits) do
    wake(limit)
    forget_if_idle(limit)
  end
  return {'ok'}
end
return redis.error_reply('flow.lua: unknown operation ' .. tostring(op))
