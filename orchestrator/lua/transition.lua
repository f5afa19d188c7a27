-- Apply a batch of state transitions and append their audit records, all or nothing.
-- Compare-and-set twice over: the audit chain must still end where the caller read it
-- (the records were hashed against that tail), and every target must still be in the
-- state the caller read (the records say "from").
-- A transition may also release dependents that run on counters: each one's count of
-- unfinished dependencies drops by one, and those that reach zero are returned as ready.
-- Being inside the compare-and-set, a release happens exactly once per transition.
-- A transition whose expected state is '' creates its step (a fan-out's items): the step
-- must not exist yet, gets the definition given, and counts towards steps_total.
-- A transition may also schedule a message to be published later (a retry): it is
-- stored with its due time together with the state that expects it, so a crash can
-- neither lose the retry of a step recorded as retrying nor leave a retry without one.
-- A final failure also files its dead letter here, so no dead-lettered step lacks one.
-- Moving a step back from a final state (resume, replay) takes it out of the counts.
-- A batch is applied once even if its call is repeated (a client retrying after a lost
-- connection, whose first try did run): its first target keeps the batch's token, and a
-- repeat that finds it there answers as the first try did instead of failing its checks.
-- It also keeps, per priority class (the workflow's), the count of outstanding steps
-- (queued, running or retrying) that admission control reads, and of finished ones. A
-- parked workflow's steps are not outstanding: parking takes them out of the count.
-- And the metrics (orchestrator.metrics reads them): steps per class and state, run time
-- (running -> ended or retrying) and wait (queued -> running) per task and workflow
-- latency per class as histograms, retries per task, and which steps run since when.
-- KEYS: 1 workflow hash, 2 steps hash, 3 audit list, 4 results hash, 5 waiting hash,
--       6 definitions hash, 7 delayed zset, 8 delayed entries hash, 9 dead letters hash,
--       10 dead letters by time, 11 outstanding counts hash, 12 metrics hash,
--       13 running steps zset ("<class> <workflow key> <step>" -> when its attempt started)
-- ARGV: 1 expected audit tail, 2 new audit tail, 3 number of transitions N,
--       4 the batch's token, then N times:
--       target step id ('' = the workflow itself), expected state, new state,
--       fields to merge (JSON object), audit record (JSON text), result (JSON text or ''),
--       dependents to release (JSON array or ''), definition of a created step (or ''),
--       delayed message ('' for none: else "<id> <due time> <message JSON>"),
--       dead letter ('' for none: else "<id> <time> <entry JSON>")
-- Returns {'ok', steps_done, steps_total, workflow_state, ready step ids...}
--      or {'stale', current_tail} or {'conflict', target, current_state}.
local TERMINAL = {succeeded=true, failed=true, skipped=true, cancelled=true,
                  compensated=true, ['dead-lettered']=true}
local FAILED = {failed=true, ['dead-lettered']=true}
local OUTSTANDING = {queued=1, running=1, retrying=1}
local WORKFLOW_FINAL = {succeeded=true, failed=true, cancelled=true, compensated=true}
local wf, steps, audit, results, waiting = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local defs, delayed, entries, letters, letters_by_time = KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10]
local metrics, running = KEYS[12], KEYS[13]
local WIDTH, FIRST = 10, 5
local token = ARGV[4]
-- Upper bounds of the histograms' buckets, in seconds: keep in step with
-- orchestrator.metrics.BUCKETS_S (a test compares them).
local BUCKETS_S = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300,
                   600, 1800, 3600}

local function count(parts, by)
  redis.call('HINCRBY', metrics, cjson.encode(parts), by or 1)
end

-- One observation of a histogram: its bucket (the first bound it fits under; past the
-- last, bucket #BUCKETS_S + 1 = +Inf), its sum and its count. Buckets are stored one by
-- one, not cumulatively; the reader adds them up.
local function observe(name, label, seconds)
  if seconds == nil or seconds < 0 then
    return
  end
  local bucket = #BUCKETS_S + 1
  for i, bound in ipairs(BUCKETS_S) do
    if seconds <= bound then
      bucket = i
      break
    end
  end
  count({name, label, bucket})
  redis.call('HINCRBYFLOAT', metrics, cjson.encode({name .. '_sum', label}), seconds)
end

local function clock()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end

-- The task of a step: from its audit record if it names it, else from its definition.
local function task_of(target, audit_json)
  local ok, rec = pcall(cjson.decode, audit_json)
  if ok and type(rec) == 'table' and type(rec['task']) == 'string' then
    return rec['task']
  end
  local raw = redis.call('HGET', defs, target)
  if raw then
    local def = cjson.decode(raw)
    if type(def['task']) == 'string' then
      return def['task']
    end
  end
  return '?'
end

-- ``started`` is the start of a new attempt (its record's started_at), else nil.
local function measure_step(class, target, old, new, record, started, audit_json)
  if old ~= new then
    if old ~= '' and not TERMINAL[old] then
      count({'steps', class, old}, -1)
    end
    count({'steps', class, new})
  end
  local member = class .. ' ' .. wf .. ' ' .. target
  if new == 'running' and started then
    -- A new attempt (also one after a lost attempt: running -> running) runs from now.
    redis.call('ZADD', running, started, member)
    local queued = tonumber(record['queued_at'])
    if queued and (old == 'queued' or old == 'pending') then
      -- From queued (its dependencies done) to started; a retry's wait is its backoff.
      observe('wait', task_of(target, audit_json), started - queued)
    end
  elseif old == 'running' and new ~= 'running' then
    redis.call('ZREM', running, member)
    local began = tonumber(record['started_at'])
    if began and (TERMINAL[new] or new == 'retrying') then
      local task = task_of(target, audit_json)
      observe('run', task, (tonumber(record['finished_at']) or clock()) - began)
      if new == 'retrying' then
        count({'retries', task})
      end
    end
  end
end

local function measure_workflow(class, old, new)
  if WORKFLOW_FINAL[new] and not WORKFLOW_FINAL[old] then
    count({'workflows', class, new})
    local submitted = tonumber(redis.call('HGET', wf, 'submitted_at'))
    if submitted then
      observe('latency', class, clock() - submitted)
    end
  end
end

local function reply_with(ready)
  local counts = redis.call('HMGET', wf, 'steps_done', 'steps_total', 'state')
  local reply = {'ok', tonumber(counts[1]), tonumber(counts[2]), counts[3]}
  for _, step in ipairs(ready) do
    table.insert(reply, step)
  end
  return reply
end

-- The reply of the first try if this batch was applied before, else nil.
local function applied_before()
  local target = ARGV[FIRST]
  if target == '' then
    if redis.call('HGET', wf, 'change') == token then
      return reply_with({})
    end
    return nil
  end
  local raw = redis.call('HGET', steps, target)
  if raw then
    local record = cjson.decode(raw)
    if record['change'] == token then
      return reply_with(record['ready'] or {})
    end
  end
  return nil
end

local tail = redis.call('HGET', wf, 'audit_tail') or ''
if tail ~= ARGV[1] then
  return applied_before() or {'stale', tail}
end
local n = tonumber(ARGV[3])
local loaded = {}
for i = 0, n - 1 do
  local target, expected = ARGV[FIRST + i * WIDTH], ARGV[FIRST + 1 + i * WIDTH]
  local current
  if target == '' then
    current = redis.call('HGET', wf, 'state') or ''
  else
    local raw = redis.call('HGET', steps, target)
    if raw then
      loaded[i] = cjson.decode(raw)
      current = loaded[i]['state']
    else
      loaded[i] = {}
      current = ''
    end
  end
  if current ~= expected then
    return applied_before() or {'conflict', target, current}
  end
end
local ready = {}
local outstanding = KEYS[11]
local class = redis.call('HGET', wf, 'priority') or 'default'
local function outstanding_steps()
  local count = 0
  for _, raw in ipairs(redis.call('HVALS', steps)) do
    count = count + (OUTSTANDING[cjson.decode(raw)['state']] or 0)
  end
  return count
end
for i = 0, n - 1 do
  local base = FIRST + i * WIDTH
  local target, old, new = ARGV[base], ARGV[base + 1], ARGV[base + 2]
  local fields = cjson.decode(ARGV[base + 3])
  if target == '' then
    if (new == 'parked') ~= (old == 'parked') then
      -- Parked steps are no load, but they still count against the class's watermark.
      local count = outstanding_steps()
      if new == 'parked' then
        count = -count
      end
      redis.call('HINCRBY', outstanding, class, count)
      redis.call('HINCRBY', outstanding, 'parked:' .. class, -count)
    end
    redis.call('HSET', wf, 'state', new)
    for name, value in pairs(fields) do
      redis.call('HSET', wf, name, value)
    end
    if i == 0 then
      redis.call('HSET', wf, 'change', token)
    end
    if old ~= new then
      measure_workflow(class, old, new)
    end
  else
    local record = loaded[i]
    for name, value in pairs(fields) do
      record[name] = value
    end
    record['state'] = new
    if i == 0 then
      record['change'] = token
      record['ready'] = nil
    end
    redis.call('HSET', steps, target, cjson.encode(record))
    measure_step(class, target, old, new, record, tonumber(fields['started_at']), ARGV[base + 4])
    if ARGV[base + 7] ~= '' then
      redis.call('HSET', defs, target, ARGV[base + 7])
    end
    if old == '' then
      redis.call('HINCRBY', wf, 'steps_total', 1)
    end
    if ARGV[base + 5] ~= '' then
      redis.call('HSET', results, target, ARGV[base + 5])
    end
    if TERMINAL[new] and not TERMINAL[old] then
      redis.call('HINCRBY', wf, 'steps_done', 1)
    end
    local delta = (OUTSTANDING[new] or 0) - (OUTSTANDING[old] or 0)
    if delta ~= 0 and redis.call('HGET', wf, 'state') ~= 'parked' then
      redis.call('HINCRBY', outstanding, class, delta)
      if delta < 0 and TERMINAL[new] then
        redis.call('HINCRBY', outstanding, 'done:' .. class, 1)
      end
    end
    if FAILED[new] and not FAILED[old] then
      redis.call('HINCRBY', wf, 'steps_failed', 1)
    end
    if TERMINAL[old] and not TERMINAL[new] then
      redis.call('HINCRBY', wf, 'steps_done', -1)
    end
    if FAILED[old] and not FAILED[new] then
      redis.call('HINCRBY', wf, 'steps_failed', -1)
    end
    if new == 'running' and redis.call('HGET', wf, 'state') == 'pending' then
      -- The first step to start starts the workflow; its record says so.
      redis.call('HSET', wf, 'state', 'running', 'started_at', record['started_at'])
    end
  end
  redis.call('RPUSH', audit, ARGV[base + 4])
  if ARGV[base + 8] ~= '' then
    local id, due, message = string.match(ARGV[base + 8], '^(%S+) (%S+) (.*)$')
    redis.call('HSET', entries, id, message)
    redis.call('ZADD', delayed, due, id)
  end
  if ARGV[base + 9] ~= '' then
    local id, at, entry = string.match(ARGV[base + 9], '^(%S+) (%S+) (.*)$')
    redis.call('HSET', letters, id, entry)
    redis.call('ZADD', letters_by_time, at, id)
  end
  if ARGV[base + 6] ~= '' then
    for _, dependent in ipairs(cjson.decode(ARGV[base + 6])) do
      if redis.call('HINCRBY', waiting, dependent, -1) == 0 then
        table.insert(ready, dependent)
      end
    end
  end
end
redis.call('HSET', wf, 'audit_tail', ARGV[2])
if #ready > 0 and ARGV[FIRST] ~= '' then
  -- Kept for a repeat of this batch: these steps must still be published.
  local record = loaded[0]
  record['ready'] = ready
  redis.call('HSET', steps, ARGV[FIRST], cjson.encode(record))
end
return reply_with(ready)
