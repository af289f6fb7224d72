-- Window sums for the alert rule, one round trip for every bucket a call judges.
--
-- KEYS: one key of the store (p:wm), only so that a cluster client routes the call to the prefix's slot.
-- ARGV: prefix, bucket_s, min_count, floor, rule, count_field, negative_field, then per query: kind, name,
--       start_s, mid_s, end_s
-- count_field/negative_field: 'nn'/'nneg' to count novel events only (the default rule), 'n'/'neg' for all.
-- Returns per query: n and neg in [mid, end) (recent), n and neg in [start, mid) (baseline), and the
-- entity's last alert window end in ms (-1 if none) for the cooldown.
-- The recent window is summed first; when it cannot pass the rule's count and floor checks the
-- (much longer) baseline is not read at all and comes back as -1, -1.
local p = ARGV[1]
local bucket = tonumber(ARGV[2])
local min_count = tonumber(ARGV[3])
local floor = tonumber(ARGV[4])
local rule = ARGV[5]
local f_n, f_neg = ARGV[6], ARGV[7]
local out = {}
local function sum(kind, name, from, to)
  local n, neg = 0, 0
  local t = from
  while t < to do
    local v = redis.call('HMGET', p .. ':b:' .. kind .. ':' .. name .. ':' .. string.format('%d', t), f_n, f_neg)
    n = n + tonumber(v[1] or '0')
    neg = neg + tonumber(v[2] or '0')
    t = t + bucket
  end
  return n, neg
end
local i = 8
while i <= #ARGV do
  local kind, name = ARGV[i], ARGV[i + 1]
  local s, m, e = tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3]), tonumber(ARGV[i + 4])
  local rn, rneg = sum(kind, name, m, e)
  local bn, bneg = -1, -1
  if rn >= min_count and rneg >= floor * rn then bn, bneg = sum(kind, name, s, m) end
  local last = tonumber(redis.call('GET', p .. ':cooldown:' .. rule .. ':' .. kind .. ':' .. name) or '-1')
  table.insert(out, rn); table.insert(out, rneg); table.insert(out, bn); table.insert(out, bneg); table.insert(out, last)
  i = i + 5
end
return out
