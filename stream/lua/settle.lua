-- Settle judged buckets, after their alerts (if any) were acknowledged by Kafka: they leave the
-- pending set and their leases, and each entity's cooldown moves to its newest alert window end.
-- Until this runs, a crash only makes the buckets come back (same alert ids): duplicates at worst.
--
-- KEYS: one key of the store (p:wm), only so that a cluster client routes the call to the prefix's slot.
-- ARGV: prefix, ttl_s, members_json ["kind|name|bucket_end_s", ...],
--       cooldowns_json [["rule:kind:name", window_end_ms], ...]
local p = ARGV[1]
local ttl = tonumber(ARGV[2])
local members = cjson.decode(ARGV[3])
local cooldowns = cjson.decode(ARGV[4])
local pending_key, lease_key, redo_key = p .. ':pending', p .. ':lease', p .. ':redo'
for _, member in ipairs(members) do
  redis.call('ZREM', lease_key, member)
  -- More negatives reached the bucket while it was being judged: keep it pending for another look.
  if redis.call('SREM', redo_key, member) == 0 then redis.call('ZREM', pending_key, member) end
end
for _, c in ipairs(cooldowns) do
  local key = p .. ':cooldown:' .. c[1]
  local last = tonumber(redis.call('GET', key) or '-1')
  if c[2] > last then redis.call('SET', key, string.format('%d', c[2]), 'EX', ttl) end
end
return #members
