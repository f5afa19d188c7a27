-- Apply a batch of state transitions and append their audit records, all or nothing.
-- Compare-and-set twice over: every target must still be in the state the caller read
-- (the records say "from"), and each record's chain must still end where the caller read
-- it (the record was hashed against that end). Each step's records are a chain of their
-- own, ending in its record's ``tail``; the workflow's own records are another, ending in
-- the workflow's ``audit_tail`` (see orchestrator.audit). So transitions of different
-- steps never contend for one tail. A change may carry no record (its batch's record on
-- the workflow says what it did: "queued" for a whole batch of steps), and a change of the
-- workflow from '*' to '*' is a record alone, moving no state.
-- A guarded batch (a worker claiming a step from what it kept of the workflow, without
-- reading it first) applies only if the workflow is still the submission it kept (its
-- seq), with the definitions it kept (defs_rev: a resume rewrites definitions), and in
-- one of the states it presumed.
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
-- Admission control counts a class's outstanding steps (queued, running or retrying) and
-- how many finished from the moves counted for the metrics (orchestrator.admission). A
-- parked workflow's steps are not outstanding: the count of them is kept here, per class
-- (the workflow's), in the outstanding hash, and taken off.
-- And the metrics (orchestrator.metrics reads them): steps moved per class, from state
-- to state (the steps now in each state are what came in less what left), run time
-- (running -> ended or retrying) and wait (queued -> running) per task and workflow
-- latency per class as histograms, and retries per task. (How long the oldest step has
-- run, workers tell with their heartbeats: orchestrator.heartbeats.)
-- A worker measures the run and wait of its own step (the batch's first) itself and adds
-- them up in memory (workers.observations): two histogram writes per transition saved.
-- KEYS: 1 workflow hash, 2 steps hash, 3 audit list, 4 results hash, 5 waiting hash,
--       6 definitions hash, 7 delayed zset, 8 delayed entries hash, 9 dead letters hash,
--       10 dead letters by time, 11 outstanding hash (parked counts), 12 metrics hash
-- ARGV: 1 guard ('' for none: else JSON {"seq": n, "rev": n, "states": [...]}),
--       2 number of transitions N, 3 the batch's token, 4 '1' if the caller measures the
--       first target's run and wait itself (else ''), then N times:
--       target step id ('' = the workflow itself), expected state, new state,
--       fields to merge (JSON object), audit record (JSON text, or '' for none), the end
--       of its chain it was hashed against, its own hash, result (JSON text or ''),
--       dependents to release (JSON array or ''), definition of a created step (or ''),
--       delayed message ('' for none: else "<id> <due time> <message JSON>"),
--       dead letter ('' for none: else "<id> <time> <entry JSON>")
-- Every read comes first and every write is gathered and made once at the end, one
-- command per key where Redis takes many values (HSET, RPUSH, ZADD, HINCRBY per field):
-- a step's two transitions are most of what treadle asks of Redis, and a batch of a
-- thousand queued steps costs a handful of commands, not thousands.
-- Returns {'ok', steps_done, steps_total, workflow_state, ready step ids...}
--      or {'stale', target, its chain's end} or {'conflict', target, current_state}
--      (a guard that fails is a conflict of the workflow: target '').
local TERMINAL = {succeeded=true, failed=true, skipped=true, cancelled=true,
                  compensated=true, ['dead-lettered']=true}
local FAILED = {failed=true, ['dead-lettered']=true}
local OUTSTANDING = {queued=1, running=1, retrying=1}
local WORKFLOW_FINAL = {succeeded=true, failed=true, cancelled=true, compensated=true}
local wf, steps, audit, results, waiting = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local defs, delayed, entries, letters, letters_by_time = KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10]
local outstanding, metrics = KEYS[11], KEYS[12]
local WIDTH, FIRST = 12, 5
local token = ARGV[3]
local caller_measures = ARGV[4] == '1'
-- Redis takes at most this many values in one call from a script (Lua's unpack limit).
local CHUNK = 4000
-- Upper bounds of the histograms' buckets, in seconds: keep in step with
-- orchestrator.metrics.BUCKETS_S (a test compares them).
local BUCKETS_S = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300,
                   600, 1800, 3600}

local head = redis.call('HMGET', wf, 'audit_tail', 'state', 'priority', 'steps_done',
                        'steps_total', 'steps_failed', 'change', 'submitted_at', 'seq',
                        'defs_rev')
local tail, wf_state = head[1] or '', head[2] or ''
local class = head[3] or 'default'
local done, total, failed = tonumber(head[4]) or 0, tonumber(head[5]) or 0, tonumber(head[6]) or 0

-- What the batch writes, gathered.
local wf_set = {}
local records, record_order = {}, {}
local audit_records, results_set, defs_set = {}, {}, {}
local metric_add, metric_float, outstanding_add = {}, {}, {}

local function add(into, field, by)
  into[field] = (into[field] or 0) + by
end

local function set_wf(name, value)
  wf_set[name] = value
end

local function count(parts, by)
  add(metric_add, cjson.encode(parts), by or 1)
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
  add(metric_float, cjson.encode({name .. '_sum', label}), seconds)
end

local function clock()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end

-- Calls ``command key v1 v2 ...`` over ``values``, in chunks Lua can unpack.
local function many(command, key, values)
  for i = 1, #values, CHUNK do
    redis.call(command, key, unpack(values, i, math.min(i + CHUNK - 1, #values)))
  end
end

local function pairs_of(map, order)
  local flat = {}
  for _, name in ipairs(order) do
    table.insert(flat, name)
    table.insert(flat, map[name])
  end
  return flat
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
-- ``timed``: whether to observe its run and wait here (not if its caller does).
local function measure_step(target, old, new, record, started, audit_json, timed)
  if old ~= new then
    -- One count per move, not one out of ``old`` and one into ``new``: the reader adds up
    -- what came into a state and takes off what left it (orchestrator.metrics).
    count({'moved', class, old, new})
  end
  if new == 'running' and started then
    local queued = tonumber(record['queued_at'])
    if timed and queued and (old == 'queued' or old == 'pending') then
      -- From queued (its dependencies done) to started; a retry's wait is its backoff.
      observe('wait', task_of(target, audit_json), started - queued)
    end
  elseif old == 'running' and new ~= 'running' then
    local began = tonumber(record['started_at'])
    if began and (TERMINAL[new] or new == 'retrying') and (timed or new == 'retrying') then
      local task = task_of(target, audit_json)
      if timed then
        observe('run', task, (tonumber(record['finished_at']) or clock()) - began)
      end
      if new == 'retrying' then
        count({'retries', task})
      end
    end
  end
end

local function measure_workflow(old, new)
  if WORKFLOW_FINAL[new] and not WORKFLOW_FINAL[old] then
    count({'workflows', class, new})
    local submitted = tonumber(head[8])
    if submitted then
      observe('latency', class, clock() - submitted)
    end
  end
end

local function reply_with(ready)
  local reply = {'ok', done, total, wf_state}
  for _, step in ipairs(ready) do
    table.insert(reply, step)
  end
  return reply
end

-- The reply of the first try if this batch was applied before, else nil.
local function applied_before()
  local target = ARGV[FIRST]
  if target == '' then
    if head[7] == token then
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

if ARGV[1] ~= '' then
  local guard = cjson.decode(ARGV[1])
  local presumed = false
  for _, state in ipairs(guard['states']) do
    presumed = presumed or state == wf_state
  end
  if not presumed or tostring(guard['seq']) ~= (head[9] or '')
      or tonumber(guard['rev']) ~= (tonumber(head[10]) or 0) then
    return applied_before() or {'conflict', '', wf_state}
  end
end
local n = tonumber(ARGV[2])
local targets = {}
for i = 0, n - 1 do
  local target = ARGV[FIRST + i * WIDTH]
  if target ~= '' then
    table.insert(targets, target)
  end
end
local stored = {}
for i = 1, #targets, CHUNK do
  local last = math.min(i + CHUNK - 1, #targets)
  local raws = redis.call('HMGET', steps, unpack(targets, i, last))
  for j = i, last do
    stored[targets[j]] = raws[j - i + 1]
  end
end
local loaded = {}
for i = 0, n - 1 do
  local target, expected = ARGV[FIRST + i * WIDTH], ARGV[FIRST + 1 + i * WIDTH]
  local current
  if target == '' then
    current = wf_state
  elseif stored[target] then
    loaded[i] = cjson.decode(stored[target])
    current = loaded[i]['state']
  else
    loaded[i] = {}
    current = ''
  end
  if current ~= expected and expected ~= '*' then
    return applied_before() or {'conflict', target, current}
  end
end
-- The ends of the chains the batch appends to, as it appends.
local ends = {['']=tail}
for i = 0, n - 1 do
  local base = FIRST + i * WIDTH
  local target = ARGV[base]
  if ARGV[base + 4] ~= '' then
    if ends[target] == nil then
      ends[target] = (loaded[i] and loaded[i]['tail']) or ''
    end
    if ends[target] ~= ARGV[base + 5] then
      return applied_before() or {'stale', target, ends[target]}
    end
    ends[target] = ARGV[base + 6]
  end
end
local defs_rev = tonumber(head[10]) or 0
local ready = {}
local function outstanding_steps()
  local outstanding_now = 0
  for _, raw in ipairs(redis.call('HVALS', steps)) do
    outstanding_now = outstanding_now + (OUTSTANDING[cjson.decode(raw)['state']] or 0)
  end
  return outstanding_now
end
for i = 0, n - 1 do
  local base = FIRST + i * WIDTH
  local target, old, new = ARGV[base], ARGV[base + 1], ARGV[base + 2]
  local fields = cjson.decode(ARGV[base + 3])
  if old == '*' then
    old = (target == '' and wf_state) or loaded[i]['state'] or ''
  end
  if new == '*' then
    new = old
  end
  if target == '' then
    if (new == 'parked') ~= (old == 'parked') then
      -- Parked steps are no load, but they still count against the class's watermark.
      local parked = outstanding_steps()
      if new ~= 'parked' then
        parked = -parked
      end
      add(outstanding_add, 'parked:' .. class, parked)
    end
    wf_state = new
    set_wf('state', new)
    for name, value in pairs(fields) do
      set_wf(name, value)
    end
    if i == 0 then
      set_wf('change', token)
    end
    if old ~= new then
      measure_workflow(old, new)
    end
  else
    local record = loaded[i]
    for name, value in pairs(fields) do
      record[name] = value
    end
    record['state'] = new
    if ARGV[base + 4] ~= '' then
      record['tail'] = ARGV[base + 6]
    end
    if i == 0 then
      record['change'] = token
      record['ready'] = nil
    end
    if not records[target] then
      table.insert(record_order, target)
    end
    records[target] = record
    measure_step(target, old, new, record, tonumber(fields['started_at']), ARGV[base + 4],
                 i > 0 or not caller_measures)
    if ARGV[base + 9] ~= '' then
      table.insert(defs_set, target)
      table.insert(defs_set, ARGV[base + 9])
      if old ~= '' and defs_rev == (tonumber(head[10]) or 0) then
        -- A definition rewritten (a resume): what workers kept of the old ones is stale.
        defs_rev = defs_rev + 1
        set_wf('defs_rev', defs_rev)
      end
    end
    if old == '' then
      total = total + 1
    end
    if ARGV[base + 7] ~= '' then
      table.insert(results_set, target)
      table.insert(results_set, ARGV[base + 7])
    end
    if TERMINAL[new] and not TERMINAL[old] then
      done = done + 1
    end
    local delta = (OUTSTANDING[new] or 0) - (OUTSTANDING[old] or 0)
    if delta ~= 0 and wf_state == 'parked' then
      -- Counted as a move all the same: the parked count keeps it off the load.
      add(outstanding_add, 'parked:' .. class, delta)
    end
    if FAILED[new] and not FAILED[old] then
      failed = failed + 1
    end
    if TERMINAL[old] and not TERMINAL[new] then
      done = done - 1
    end
    if FAILED[old] and not FAILED[new] then
      failed = failed - 1
    end
    if new == 'running' and wf_state == 'pending' then
      -- The first step to start starts the workflow; its record says so.
      wf_state = 'running'
      set_wf('state', 'running')
      set_wf('started_at', record['started_at'])
    end
  end
  if ARGV[base + 4] ~= '' then
    table.insert(audit_records, ARGV[base + 4])
  end
  if ARGV[base + 10] ~= '' then
    local id, due, message = string.match(ARGV[base + 10], '^(%S+) (%S+) (.*)$')
    redis.call('HSET', entries, id, message)
    redis.call('ZADD', delayed, due, id)
  end
  if ARGV[base + 11] ~= '' then
    local id, at, entry = string.match(ARGV[base + 11], '^(%S+) (%S+) (.*)$')
    redis.call('HSET', letters, id, entry)
    redis.call('ZADD', letters_by_time, at, id)
  end
  if ARGV[base + 8] ~= '' then
    for _, dependent in ipairs(cjson.decode(ARGV[base + 8])) do
      if redis.call('HINCRBY', waiting, dependent, -1) == 0 then
        table.insert(ready, dependent)
      end
    end
  end
end
if #ready > 0 and ARGV[FIRST] ~= '' then
  -- Kept for a repeat of this batch: these steps must still be published.
  records[ARGV[FIRST]]['ready'] = ready
end

-- The writes.
if done ~= (tonumber(head[4]) or 0) then
  set_wf('steps_done', done)
end
if total ~= (tonumber(head[5]) or 0) then
  set_wf('steps_total', total)
end
if failed ~= (tonumber(head[6]) or 0) then
  set_wf('steps_failed', failed)
end
if ends[''] ~= tail then
  set_wf('audit_tail', ends[''])
end
local wf_pairs = {}
for name, value in pairs(wf_set) do
  table.insert(wf_pairs, name)
  table.insert(wf_pairs, value)
end
many('HSET', wf, wf_pairs)
if #record_order > 0 then
  local encoded = {}
  for _, target in ipairs(record_order) do
    encoded[target] = cjson.encode(records[target])
  end
  many('HSET', steps, pairs_of(encoded, record_order))
end
if #defs_set > 0 then
  many('HSET', defs, defs_set)
end
if #results_set > 0 then
  many('HSET', results, results_set)
end
if #audit_records > 0 then
  many('RPUSH', audit, audit_records)
end
for field, by in pairs(outstanding_add) do
  if by ~= 0 then
    redis.call('HINCRBY', outstanding, field, by)
  end
end
for field, by in pairs(metric_add) do
  if by ~= 0 then
    redis.call('HINCRBY', metrics, field, by)
  end
end
for field, by in pairs(metric_float) do
  redis.call('HINCRBYFLOAT', metrics, field, by)
end
return reply_with(ready)
