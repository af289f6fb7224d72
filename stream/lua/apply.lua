-- Count one micro-batch in event-time windows, then hand out the (entity, bucket)s that are ready
-- to be judged by the alert rule. One atomic call per batch (also called with no events by the
-- worker's periodic tick, so buckets close and abandoned ones are re-offered without new input).
--
-- KEYS: one key of the store (p:wm), so that a cluster client routes the call to the slot of the
--       store's hash tag; every key the script touches starts with the prefix, which carries that tag.
-- ARGV: prefix, ttl_s, lateness_ms, events_json, sources_json, bucket_s,
--       now_ms, mode ('live' | 'replay'), idle_ms, close_delay_ms, lease_ms, horizon_ms,
--       novelty_horizon_ms (0: novelty off), novelty_min_votes, committed_json
-- events_json: [[id, ts_ms, bucket_start_s, sentiment_index(1..3), score_micro, [[kind, name], ...], source,
--                example, [band_key, ...]], ...]
--   example: what an alert shows for a negative event (a JSON string [id, text cut short]), or ''.
--   band_key: the event's MinHash LSH band keys (stream/novelty.py); none when novelty is off.
-- sources_json: every input partition ("topic:partition") of the stream.
-- committed_json: {"topic:partition": ms, ...}, the newest event time of the inputs the caller's consumer
--   group has committed on each partition (only ever more of them), or '' for a caller whose inputs are
--   durable once counted. It bounds the dedupe floor (below).
--
-- Low watermark: the minimum over input partitions of the newest event time counted from each.
-- Each partition is read in order, so an ordered replay is never late however partitions interleave.
--   replay mode: pure event time. Until every partition has delivered, the low watermark is
--     undefined (nothing is late; buckets close at the newest event time minus the lateness).
--   live mode: a partition that has delivered nothing for idle_ms of wall-clock time (or never
--     delivered) stops holding the watermark back, as Flink's withIdleness does; it rejoins when it
--     delivers again. When every partition is idle the newest partition time is used. A bucket also
--     closes once the wall clock has passed its end by close_delay_ms, so the last surge before a
--     quiet spell is judged.
--
-- Alert hand-off (at least once): an (entity, bucket) that received a negative event is queued in
-- the pending set. Once closed it is *leased* to the caller for lease_ms, not removed: it leaves
-- the pending set only in settle.lua, after its alert (if any) was acknowledged by Kafka. A caller
-- that dies leaves the lease to expire and the bucket is offered again (same deterministic alert
-- id). Per entity, buckets are offered strictly oldest first: while an older bucket of an entity is
-- leased, its newer buckets wait, so cooldowns are decided in the same order as without a crash.
-- (The ordered set is sorted by bucket end, then member, so an entity's buckets come in time order.)
--
-- Bucket hashes (p:b:kind:name:bucket_start) count n, neg, neu, pos and ssum (score in micro-units);
-- a ticker's bucket also counts its negative events per topic, in fields 'nt:<topic>', so that an
-- alert on a ticker can say which topics drove it.
--
-- Exact dedupe with bounded memory: an event id is claimed in the seen hash of its event-time bucket,
-- sharded so that each hash stays small enough for Redis' compact listpack encoding (about 10-25 bytes
-- an id instead of about 120 for a key per id): p:seenb:<bucket_start>:<shard>, shard = sha1(id) mod k,
-- k fixed per bucket when the bucket's first id arrives (p:seenk) from the densest bucket still held
-- (p:seenc: a sorted set of the held buckets scored by their id counts, so the densest is one lookup;
-- p:seent: the same buckets scored by time, so a floor move reads only the buckets it drops. Both keep
-- the cost of a call independent of how many buckets the horizon holds: a hash of counts read whole on
-- every call had cost a replay ~20 us an event). The seen hashes are dropped by event time, not by the wall clock:
-- once the lateness cut (low watermark - lateness) is past a bucket's end by the dedupe horizon. That
-- point, the dedupe floor (p:seenfloor, ms), only ever moves forward, even when the low watermark moves
-- back (live mode: an idle partition rejoins), and an event older than the floor is refused as late
-- before anything else: an id whose seen record may be gone can never be counted a second time.
-- The floor's cut is taken from the committed event times (p:wmc, the newest per partition of what the
-- callers reported), not from what was counted: counting runs ahead of the periodic Kafka commit, and a
-- worker killed in between has its partitions redelivered from the last commit. On a sparse replay a
-- few batches span more event time than lateness + horizon, so a floor moved by counted times passed
-- those events and refused them as late instead of answering duplicate. So a partition holds the floor at
-- min(counted, committed); in live mode an idle partition stops holding it only once all it counted
-- is committed (an idle one with counted, uncommitted events is a worker that died holding them).
-- The alert examples of a bucket (p:exb:<bucket_start>, fields 'kind|name|1..3') are dropped at the same
-- point: by then every window that quotes them has been judged.
--
-- Novelty (near-duplicate stories): the event-time axis is cut into generations of novelty_horizon_ms;
-- p:nov:<gen> maps each band key to "ts id" of the earliest counted event of that generation that had
-- it (the generations held are listed in p:novg). An event's candidates are the events its band keys
-- point to in its own generation and the one before that are earlier than it in (event time, id)
-- order, so a repost is found one to two horizons back (whole generations, so that what an event is
-- compared with does not depend on which copies arrived first); its votes are the bands it shares with
-- the best of them (most bands, then earliest), and it is a near-duplicate of that candidate when
-- votes >= novelty_min_votes. New events of a batch are judged in (event time, id) order.
-- Across partitions a later copy can reach Redis first and be counted as novel. So that the windows
-- (and the alerts judged from them) do not depend on that order, a novel event also leaves
-- 'e:<id>' -> [sentiment, bucket, entities] in its generation; when an earlier copy arrives (counted,
-- sharing enough bands, the later one in its generation or the next), it takes the band keys over and
-- takes the later copy's novel counts back ('novelty_retracted' in p:metrics). In replay mode this always happens
-- before the later copy's bucket closes: the earlier copy is not behind the low watermark, so neither is
-- the later one. The later copy's scored record, already sent, still says what was decided then.
-- The decision is kept as the value of the event's seen-hash field ('' or "votes dup_id"), so a
-- redelivered event reports the current decision. Bucket and total hashes count novel events in 'nn' and
-- novel negatives in 'nneg' besides 'n'/'neg' (which count every event: the buzz); an alert quotes only
-- novel negatives. Generations are dropped once the lateness cut is a horizon past them.
--
-- Returns {statuses (0 counted, 1 duplicate, 2 late), offered ("kind|name|bucket_end_s", oldest first),
--          votes per event, duplicate_of per event ('' for none)}.
local p = ARGV[1]
local ttl = tonumber(ARGV[2])
local lateness = tonumber(ARGV[3])
local events = cjson.decode(ARGV[4])
local sources = cjson.decode(ARGV[5])
local bucket_s = tonumber(ARGV[6])
local now = tonumber(ARGV[7])
local live = ARGV[8] == 'live'
local idle_ms = tonumber(ARGV[9])
local close_delay = tonumber(ARGV[10])
local lease_ms = tonumber(ARGV[11])
local horizon = tonumber(ARGV[12])
local nov_h = tonumber(ARGV[13] or '0')
local min_votes = tonumber(ARGV[14] or '1')
local committed_arg = ARGV[15] or ''
local pending_key, lease_key, redo_key = p .. ':pending', p .. ':lease', p .. ':redo'
local fields = {'neg', 'neu', 'pos'}
local wm_key, wmp_key, wmt_key = p .. ':wm', p .. ':wmp', p .. ':wmt'
local wm0 = tonumber(redis.call('GET', wm_key) or '-1')
local wm = wm0
local pw, pt = {}, {}
local flat = redis.call('HGETALL', wmp_key)
for i = 1, #flat, 2 do pw[flat[i]] = tonumber(flat[i + 1]) end
if live then
  flat = redis.call('HGETALL', wmt_key)
  for i = 1, #flat, 2 do pt[flat[i]] = tonumber(flat[i + 1]) end
end
local changed = {}
local touched = {}
-- Committed event times per partition (nil: the caller counts only durable inputs, see committed_json).
local wmc_key = p .. ':wmc'
local wmc, wmc_changed = nil, {}
if committed_arg ~= '' then
  wmc = {}
  flat = redis.call('HGETALL', wmc_key)
  for i = 1, #flat, 2 do wmc[flat[i]] = tonumber(flat[i + 1]) end
  if #flat == 0 then
    -- The first call that reports commits. Upgrade: a store counted before p:wmc took what it counted as
    -- committed (true after the old workers stopped). A new store has counted nothing yet. The field '.'
    -- marks the hash as started, so that a partition missing from it has never committed anything.
    for src, ms in pairs(pw) do wmc[src] = ms; wmc_changed[src] = true end
    wmc['.'] = 0
    wmc_changed['.'] = true
  end
  for src, ms in pairs(cjson.decode(committed_arg)) do
    if wmc[src] == nil or ms > wmc[src] then wmc[src] = ms; wmc_changed[src] = true end
  end
end
local seenk_key, seenc_key, seent_key, floor_key = p .. ':seenk', p .. ':seenc', p .. ':seent', p .. ':seenfloor'
local floor = tonumber(redis.call('GET', floor_key) or '-1')
-- Upgrade: a store written before the sorted sets kept the held buckets' counts in a hash (p:seenn).
local seenn_key = p .. ':seenn'
if redis.call('EXISTS', seenn_key) == 1 then
  local old = redis.call('HGETALL', seenn_key)
  for i = 1, #old, 2 do
    redis.call('ZADD', seenc_key, old[i + 1], old[i])
    redis.call('ZADD', seent_key, old[i], old[i])
  end
  redis.call('DEL', seenn_key)
end
-- Ids per seen hash: Redis keeps a hash of up to 128 short fields (hash-max-listpack-entries) as one
-- compact listpack; aim below that so a bucket somewhat denser than the last ones still fits.
local SHARD_TARGET = 96
local shards = {}
local new_ids, new_order = {}, {}
-- The densest held bucket, read at most once per call (the seen counts only change at the end of it).
local densest = nil
local seenk_touched = false
local function shard_count(bucket)
  local k = shards[bucket]
  if k ~= nil then return k end
  local b = string.format('%d', bucket)
  k = tonumber(redis.call('HGET', seenk_key, b) or '0')
  if k == 0 then
    if densest == nil then
      local top = redis.call('ZRANGE', seenc_key, '+inf', '-inf', 'BYSCORE', 'REV', 'LIMIT', 0, 1, 'WITHSCORES')
      densest = tonumber(top[2] or '0')
    end
    k = math.max(1, math.ceil(densest * 1.25 / SHARD_TARGET))
    redis.call('HSET', seenk_key, b, k)
    seenk_touched = true
  end
  shards[bucket] = k
  return k
end
-- The seen-hash key of an id.
local function seen_key_of(id, bucket)
  local k = shard_count(bucket)
  local shard = 0
  if k > 1 then shard = tonumber(string.sub(redis.sha1hex(id), 1, 7), 16) % k end
  return p .. ':seenb:' .. string.format('%d', bucket) .. ':' .. shard
end
-- Claim an id: its key and false when it is new (now claimed, with an empty decision), else its key and
-- the decision stored with it.
local function seen(id, bucket)
  local key = seen_key_of(id, bucket)
  if redis.call('HSETNX', key, id, '') == 1 then return key, false end
  return key, redis.call('HGET', key, id)
end
-- A new id's novelty decision, stored only when there is one to store ('' is already there).
local function claim(key, bucket, id, value)
  if value ~= '' then redis.call('HSET', key, id, value) end
  if new_ids[key] == nil then new_ids[key] = 0; table.insert(new_order, {key, bucket}) end
  new_ids[key] = new_ids[key] + 1
end

local function low_watermark()
  local m, newest = nil, nil
  for _, src in ipairs(sources) do
    local v = pw[src]
    if live then
      if v ~= nil then
        if newest == nil or v > newest then newest = v end
        if pt[src] ~= nil and pt[src] >= now - idle_ms and (m == nil or v < m) then m = v end
      end
    else
      if v == nil then return nil end
      if m == nil or v < m then m = v end
    end
  end
  if live and m == nil then return newest end
  return m
end

-- The dedupe floor's cut: the low watermark over min(counted, committed) per partition, so that no event
-- counted but not yet committed (redelivered after a crash) falls behind the floor. Undefined (the floor
-- stays) while a partition that holds it has committed nothing.
local function floor_cut()
  if wmc == nil then return low_watermark() end
  local m, newest = nil, nil
  for _, src in ipairs(sources) do
    local v, c = pw[src], wmc[src]
    if v ~= nil then
      if c ~= nil and c < v then v = c end
      if live and not (pt[src] ~= nil and pt[src] >= now - idle_ms) and c ~= nil and c >= pw[src] then
        -- Idle with nothing uncommitted: it stops holding the floor, as it stops holding the watermark.
        if newest == nil or v > newest then newest = v end
      else
        if c == nil then return nil end
        if m == nil or v < m then m = v end
      end
    elseif not live then
      return nil
    end
  end
  if live and m == nil then return newest end
  return m
end

-- A partition that delivers anything (even duplicates) is active: its wall-clock time is noted first.
if live then
  for _, e in ipairs(events) do
    local src = e[7]
    if pt[src] ~= now then pt[src] = now; touched[src] = true end
  end
end

-- Writes are gathered per key and flushed once per batch (one HINCRBY per key and field, one
-- EXPIRE per key): the same totals as event-by-event writes in a fraction of the Redis commands.
local incr, incr_order = {}, {}
local function add(key, f, d)
  local h = incr[key]
  if h == nil then h = {}; incr[key] = h; table.insert(incr_order, key) end
  h[f] = (h[f] or 0) + d
end
local ent_ts, ent_order = {}, {}
local pend, pend_order = {}, {}
local ex, ex_order = {}, {}
local counted, late, past_horizon = 0, 0, 0
local status = {}
local votes, dups = {}, {}
local first_in_batch = {}  -- id -> index of its first occurrence in this batch
local seen_key, stored = {}, {}
-- Pass 1, in arrival order: dedupe, lateness and the watermarks.
for i, e in ipairs(events) do
  local id, ts, bucket, src = e[1], e[2], e[3], e[7]
  votes[i], dups[i] = 0, ''
  local low = low_watermark()
  if ts < floor then
    -- Older than the dedupe floor: its seen record may be gone, so it is never counted (again).
    status[i] = 2
    late = late + 1
    past_horizon = past_horizon + 1
  elseif first_in_batch[id] ~= nil then
    status[i] = 1
  else
    local key, v = seen(id, bucket)
    if v then
      status[i] = 1
      stored[i] = v
    else
      first_in_batch[id] = i
      seen_key[i] = key
      if low ~= nil and ts < low - lateness then
        status[i] = 2
        late = late + 1
      else
        status[i] = 0
        counted = counted + 1
        if ts > wm then wm = ts end
        if pw[src] == nil or ts > pw[src] then pw[src] = ts; changed[src] = true end
      end
    end
  end
end

-- Pass 2, in (event time, id) order: the novelty of every event seen for the first time (index
-- written for counted ones only), then its seen record with that decision.
local nov_gens = {}
local gen_exists = {}
local gen_keys = {}
-- The index key of a generation, built once per call (every event of a batch asks for the same few).
local function gen_key(gen)
  local k = gen_keys[gen]
  if k == nil then k = p .. ':nov:' .. string.format('%d', gen); gen_keys[gen] = k end
  return k
end
local retracted = 0
local function earlier(ts_a, id_a, ts_b, id_b)
  return ts_a < ts_b or (ts_a == ts_b and id_a < id_b)
end
local function split_ts_id(raw)
  local sp = string.find(raw, ' ', 1, true)
  return tonumber(string.sub(raw, 1, sp - 1)), string.sub(raw, sp + 1)
end
-- Counts of a novel event that turns out to repeat an earlier one (which arrived after it).
local function retract(f_id, f_ts, gkey, earlier_id, v)
  local raw = redis.call('HGET', gkey, 'e:' .. f_id)
  if not raw then return end  -- not counted as novel: nothing to take back
  redis.call('HDEL', gkey, 'e:' .. f_id)
  local rec = cjson.decode(raw)
  local cls, fb, ents = rec[1], rec[2], rec[3]
  for _, ent in ipairs(ents) do
    local bk = p .. ':b:' .. ent[1] .. ':' .. ent[2] .. ':' .. string.format('%d', fb)
    local tk = p .. ':tot:' .. ent[1] .. ':' .. ent[2]
    add(bk, 'nn', -1); add(tk, 'nn', -1)
    if cls == 1 then add(bk, 'nneg', -1); add(tk, 'nneg', -1) end
  end
  local key = seen_key_of(f_id, fb)
  redis.call('HSET', key, f_id, string.format('%d', v) .. ' ' .. earlier_id)
  retracted = retracted + 1
end
local function judge_novelty(i, write)
  local e = events[i]
  local id, ts, bands = e[1], e[2], e[9]
  if nov_h <= 0 or type(bands) ~= 'table' or #bands == 0 then return end
  local g = math.floor(ts / nov_h)
  -- An earlier copy is in this generation or the one before; a later one (arrived first) in this or the next.
  local gens = {g - 1, g, g + 1}
  local cand, cand_ts = {}, {}
  local later, later_ts, later_gen = {}, {}, {}
  local writes = {}
  local gkey = gen_key(g)
  for _, gen in ipairs(gens) do
    local key = gen_key(gen)
    -- A generation nobody wrote yet (the next one, nearly always) costs one EXISTS per call, not a read per event.
    if gen_exists[gen] == nil then gen_exists[gen] = redis.call('EXISTS', key) == 1 end
    local got = gen_exists[gen] and redis.call('HMGET', key, unpack(bands)) or {}
    for b = 1, #bands do
      local raw = got[b]
      local free = gen == g and not raw
      if raw then
        local cts, cid = split_ts_id(raw)
        if cid ~= id then
          if earlier(cts, cid, ts, id) then  -- only ever in this generation or the one before
            cand[cid] = (cand[cid] or 0) + 1
            cand_ts[cid] = cts
          else
            later[cid] = (later[cid] or 0) + 1
            later_ts[cid] = cts
            later_gen[cid] = key
            -- This event is earlier: its band key takes the entry over in its own generation.
            if gen == g then free = true end
          end
        end
      end
      if free then table.insert(writes, bands[b]) end
    end
  end
  local best, best_v, best_ts = nil, 0, nil
  for cid, v in pairs(cand) do
    if v > best_v or (v == best_v and earlier(cand_ts[cid], cid, best_ts, best)) then
      best, best_v, best_ts = cid, v, cand_ts[cid]
    end
  end
  votes[i] = best_v
  if best_v >= min_votes then dups[i] = best end
  if not write then return end
  local args = {}
  local val = string.format('%d', ts) .. ' ' .. id
  for _, bk in ipairs(writes) do table.insert(args, bk); table.insert(args, val) end
  if dups[i] == '' then
    -- Kept so that the counts can be taken back if an earlier copy arrives after this one.
    table.insert(args, 'e:' .. id)
    table.insert(args, cjson.encode({e[4], e[3], e[6]}))
  end
  if #args > 0 then
    redis.call('HSET', gkey, unpack(args))
    gen_exists[g] = true
  end
  -- Later copies (this generation or the next, so they look back at this one) counted as novel before
  -- this one arrived repeat it, whether or not this one is itself a repeat: their novel counts go.
  for cid, v in pairs(later) do
    if v >= min_votes then retract(cid, later_ts[cid], later_gen[cid], id, v) end
  end
  nov_gens[g] = gkey
end
local fresh = {}
for i, e in ipairs(events) do
  if seen_key[i] ~= nil or (status[i] == 2 and e[2] < floor) then table.insert(fresh, i) end
end
table.sort(fresh, function(a, b) return earlier(events[a][2], events[a][1], events[b][2], events[b][1]) end)
for _, i in ipairs(fresh) do
  judge_novelty(i, status[i] == 0)
  if seen_key[i] ~= nil then
    local v = ''
    if votes[i] > 0 then v = string.format('%d', votes[i]) .. ' ' .. dups[i] end
    claim(seen_key[i], events[i][3], events[i][1], v)
  end
end
-- A repeated id reports the decision made when it was first counted.
for i, e in ipairs(events) do
  if status[i] == 1 then
    local first = first_in_batch[e[1]]
    if stored[i] ~= nil then
      if stored[i] ~= '' then
        local sp = string.find(stored[i], ' ', 1, true)
        votes[i] = tonumber(string.sub(stored[i], 1, sp - 1))
        dups[i] = string.sub(stored[i], sp + 1)
      end
    elseif first ~= nil then
      votes[i], dups[i] = votes[first], dups[first]
    end
  end
end
for g, gkey in pairs(nov_gens) do
  redis.call('EXPIRE', gkey, ttl)
  redis.call('SADD', p .. ':novg', string.format('%d', g))
end
if next(nov_gens) ~= nil then redis.call('EXPIRE', p .. ':novg', ttl) end

-- Pass 3, in arrival order: count what was counted.
for i, e in ipairs(events) do
  if status[i] == 0 then
    local id, ts, bucket, cls, score, ents = e[1], e[2], e[3], e[4], e[5], e[6]
    local example = e[8]
    if example == nil or example == '' then example = id end
    local novel = dups[i] == ''
    local f = fields[cls]
    local topic = nil
    if cls == 1 then
      for _, ent in ipairs(ents) do if ent[1] == 'topic' then topic = ent[2] end end
    end
    for _, ent in ipairs(ents) do
      local kind, name = ent[1], ent[2]
      local bk = p .. ':b:' .. kind .. ':' .. name .. ':' .. bucket
      add(bk, f, 1); add(bk, 'n', 1); add(bk, 'ssum', score)
      if topic ~= nil and kind == 'ticker' then add(bk, 'nt:' .. topic, 1) end
      local tk = p .. ':tot:' .. kind .. ':' .. name
      add(tk, f, 1); add(tk, 'n', 1); add(tk, 'ssum', score)
      if novel then
        add(bk, 'nn', 1); add(tk, 'nn', 1)
        if cls == 1 then add(bk, 'nneg', 1); add(tk, 'nneg', 1) end
      end
      local ek = kind .. '\0' .. name
      local prev = ent_ts[ek]
      if prev == nil then table.insert(ent_order, {kind, name, ek}) end
      if prev == nil or ts > prev then ent_ts[ek] = ts end
      if cls == 1 then
        -- Only a bucket that received negative events can start a surge: only those are judged.
        local member = kind .. '|' .. name .. '|' .. string.format('%d', bucket + bucket_s)
        if pend[member] == nil then pend[member] = bucket + bucket_s; table.insert(pend_order, member) end
        if novel then
          -- A repost of a story already quoted adds nothing to what an alert shows.
          local xk = string.format('%d', bucket) .. '\0' .. kind .. '|' .. name
          local l = ex[xk]
          if l == nil then l = {}; ex[xk] = l; table.insert(ex_order, xk) end
          if #l < 3 then table.insert(l, example) end
        end
      end
    end
  end
end
for _, key in ipairs(incr_order) do
  local h = incr[key]
  for f, d in pairs(h) do redis.call('HINCRBY', key, f, string.format('%d', d)) end
  redis.call('EXPIRE', key, ttl)
end
local ent_kinds = {}
for _, t in ipairs(ent_order) do
  local zk = p .. ':ent:' .. t[1]
  redis.call('ZADD', zk, 'GT', string.format('%d', ent_ts[t[3]]), t[2])
  ent_kinds[zk] = true
end
for zk, _ in pairs(ent_kinds) do redis.call('EXPIRE', zk, ttl) end
for _, member in ipairs(pend_order) do
  -- A bucket being judged right now that receives more negatives is judged again after it settles.
  if redis.call('ZSCORE', lease_key, member) then
    redis.call('SADD', redo_key, member)
    redis.call('EXPIRE', redo_key, ttl)
  end
  redis.call('ZADD', pending_key, 'NX', pend[member], member)
end
if #pend_order > 0 then redis.call('EXPIRE', pending_key, ttl) end
local ex_keys = {}
for _, xk in ipairs(ex_order) do
  local b, ent = string.match(xk, '^([^%z]*)%z(.*)$')
  local key = p .. ':exb:' .. b
  local items, j = ex[xk], 1
  -- Up to three examples per entity and bucket, in arrival order: fields ent|1, ent|2, ent|3.
  for slot = 1, 3 do
    if j > #items then break end
    if redis.call('HSETNX', key, ent .. '|' .. slot, items[j]) == 1 then j = j + 1 end
  end
  ex_keys[key] = true
end
for key, _ in pairs(ex_keys) do redis.call('EXPIRE', key, ttl) end
local per_bucket, bucket_order = {}, {}
for _, t in ipairs(new_order) do
  redis.call('EXPIRE', t[1], ttl)
  local b = string.format('%d', t[2])
  if per_bucket[b] == nil then per_bucket[b] = 0; table.insert(bucket_order, b) end
  per_bucket[b] = per_bucket[b] + new_ids[t[1]]
end
if seenk_touched then redis.call('EXPIRE', seenk_key, ttl) end
for _, b in ipairs(bucket_order) do
  -- ZADD INCR, not ZINCRBY (nor ZREMRANGEBYSCORE below): only commands a deployment's ACL already allows.
  redis.call('ZADD', seenc_key, 'INCR', per_bucket[b], b)
  redis.call('ZADD', seent_key, b, b)
end
if #new_order > 0 then
  redis.call('EXPIRE', seenc_key, ttl)
  redis.call('EXPIRE', seent_key, ttl)
end
if wm > wm0 then redis.call('SET', wm_key, string.format('%d', wm)) end
for src, _ in pairs(changed) do redis.call('HSET', wmp_key, src, string.format('%d', pw[src])) end
for src, _ in pairs(touched) do redis.call('HSET', wmt_key, src, string.format('%d', pt[src])) end
if counted > 0 then redis.call('HINCRBY', p .. ':metrics', 'counted', counted) end
if late > 0 then redis.call('HINCRBY', p .. ':metrics', 'late', late) end
if past_horizon > 0 then redis.call('HINCRBY', p .. ':metrics', 'late_past_dedupe_horizon', past_horizon) end
if retracted > 0 then redis.call('HINCRBY', p .. ':metrics', 'novelty_retracted', retracted) end

-- No expiry, like p:wmp: one field per partition.
for src, _ in pairs(wmc_changed) do redis.call('HSET', wmc_key, src, string.format('%d', wmc[src])) end

-- Move the dedupe floor (whole buckets, forward only) and drop the seen ids and examples behind it.
local cut = low_watermark()
local fcut = floor_cut()
if fcut ~= nil then
  local f = fcut - lateness - horizon
  f = (f - f % (bucket_s * 1000))
  if f > floor then
    redis.call('SET', floor_key, string.format('%d', f), 'EX', ttl)
    -- Only the buckets now wholly behind the floor (their end at or before it).
    local last = math.floor(f / 1000) - bucket_s
    local gone = redis.call('ZRANGE', seent_key, '-inf', last, 'BYSCORE')
    for _, b in ipairs(gone) do
      for shard = 0, tonumber(redis.call('HGET', seenk_key, b) or '1') - 1 do
        redis.call('UNLINK', p .. ':seenb:' .. b .. ':' .. shard)
      end
      redis.call('UNLINK', p .. ':exb:' .. b)
      redis.call('HDEL', seenk_key, b)
      redis.call('ZREM', seenc_key, b)
      redis.call('ZREM', seent_key, b)
    end
  end
end

-- Drop novelty generations no event still to be counted can look back into: every such event is at or
-- after the lateness cut and looks back at most one horizon.
if nov_h > 0 and cut ~= nil then
  local keep = math.floor((cut - lateness - nov_h) / nov_h)
  for _, g in ipairs(redis.call('SMEMBERS', p .. ':novg')) do
    if tonumber(g) < keep then
      redis.call('UNLINK', p .. ':nov:' .. g)
      redis.call('SREM', p .. ':novg', g)
    end
  end
end

-- Which buckets have closed, and which of them may be handed to this caller now.
local close_ms = low_watermark()
if close_ms == nil and wm >= 0 then close_ms = wm - lateness end
if live and (close_ms == nil or now - close_delay > close_ms) then close_ms = now - close_delay end
local offered = {}
if close_ms ~= nil then
  local close_s = math.floor(close_ms / 1000)
  local ready = redis.call('ZRANGEBYSCORE', pending_key, '-inf', close_s, 'WITHSCORES')
  local blocked = {}
  local claims = {}
  for i = 1, #ready, 2 do
    local member = ready[i]
    local entity = string.match(member, '^(.*)|[^|]*$')
    if not blocked[entity] then
      local until_ms = tonumber(redis.call('ZSCORE', lease_key, member) or '-1')
      if until_ms > now then
        blocked[entity] = true  -- an older bucket of this entity is being judged elsewhere
      else
        -- Every ready bucket of an entity goes to the same caller, oldest first, and is judged in
        -- that order; another caller finds them leased and leaves the entity alone.
        table.insert(offered, member)
        table.insert(claims, string.format('%d', now + lease_ms))
        table.insert(claims, member)
      end
    end
  end
  -- In chunks: unpack() of a very long table overflows Lua's C stack.
  for c = 1, #claims, 2000 do
    redis.call('ZADD', lease_key, unpack(claims, c, math.min(c + 1999, #claims)))
  end
  if #claims > 0 then redis.call('EXPIRE', lease_key, ttl) end
end
return {status, offered, votes, dups}
