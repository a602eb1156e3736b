package limits

// The Redis scripts. Both take one key per step and, in ARGV, the plan's
// now (µs by the Limiter's clock) and reservation id, then four numbers
// per step: kind, limit, span (µs) and amount. They mirror Memory: the
// same drain arithmetic in the same double precision. Numbers are stored
// and returned with %.17g, since Lua's own conversion keeps 14 digits.
//
// Key layout: a bucket is a hash {l: level, t: µs of level}; a quota
// (kind 4) or budget (5) a string holding the tokens or micro-dollars
// spent; a concurrency set a sorted set of
// reservation ids scored by the end of their lease.

// scriptPrelude parses the arguments and reads a step's level.
const scriptPrelude = `
local now = tonumber(ARGV[1])
local id = ARGV[2]
local function fmt(x) return string.format('%.17g', x) end
-- ms is a key lifetime in µs as PEXPIRE's milliseconds, at most about 460 days.
local function ms(us) return fmt(math.min(math.ceil(us / 1000), 4e10)) end
local function arg(i, j) return tonumber(ARGV[2 + (i - 1) * 4 + j]) end
-- level returns the step's current level and, for buckets, the time of the stored level.
local function level(i, kind, limit, span)
  local key = KEYS[i]
  if kind == 3 then
    redis.call('ZREMRANGEBYSCORE', key, '-inf', fmt(now))
    return redis.call('ZCARD', key), 0
  elseif kind == 4 or kind == 5 then
    return tonumber(redis.call('GET', key) or '0'), 0
  end
  local h = redis.call('HMGET', key, 'l', 't')
  local l, t = tonumber(h[1] or '0'), tonumber(h[2] or '0')
  local elapsed = math.max(now - t, 0)
  return math.max(l - elapsed * limit / span, 0), t
end
-- store writes a bucket or quota level and its expiry.
local function store(i, kind, limit, span, l, t)
  local key = KEYS[i]
  l = math.max(l, 0)
  if kind == 4 or kind == 5 then
    redis.call('SET', key, fmt(l), 'PX', ms(span))
  elseif l == 0 then
    redis.call('DEL', key)
  else
    redis.call('HSET', key, 'l', fmt(l), 't', fmt(math.max(t, now)))
    redis.call('PEXPIRE', key, ms(l * span / limit + 1e6))
  end
  return l
end
`

// reserveScript returns {-1, level...} with the levels after reserving
// every step, or {i, level...} with the levels as they are when step i
// (from 0) is the first that does not fit, and reserves nothing.
const reserveScript = scriptPrelude + `
local n = #KEYS
local levels, times = {}, {}
local denied = -1
for i = 1, n do
  local kind, limit, span, amount = arg(i, 1), arg(i, 2), arg(i, 3), arg(i, 4)
  levels[i], times[i] = level(i, kind, limit, span)
  if denied == -1 and levels[i] + amount > limit * 1.000001 then -- as fits in Go
    denied = i - 1
  end
end
local out = {denied}
for i = 1, n do
  local kind, limit, span, amount = arg(i, 1), arg(i, 2), arg(i, 3), arg(i, 4)
  local l = levels[i]
  if denied == -1 then
    l = l + amount
    if kind == 3 then
      redis.call('ZADD', KEYS[i], fmt(now + span), id)
      redis.call('PEXPIRE', KEYS[i], ms(span))
    else
      l = store(i, kind, limit, span, l, times[i])
    end
  end
  out[i + 1] = fmt(l)
end
return out
`

// renewScript extends the lease of each step (all of kind 3) that is
// still held, XX: a renewal that comes after the release does not bring
// the slot back.
const renewScript = scriptPrelude + `
for i = 1, #KEYS do
  local span = arg(i, 3)
  if redis.call('ZADD', KEYS[i], 'XX', 'CH', fmt(now + span), id) == 1 then
    redis.call('PEXPIRE', KEYS[i], ms(span))
  end
end
return 0
`

// settleScript adds each step's amount, or releases its lease (kind 3).
const settleScript = scriptPrelude + `
for i = 1, #KEYS do
  local kind, limit, span, amount = arg(i, 1), arg(i, 2), arg(i, 3), arg(i, 4)
  if kind == 3 then
    redis.call('ZREM', KEYS[i], id)
  else
    local l, t = level(i, kind, limit, span)
    store(i, kind, limit, span, l + amount, t)
  end
end
return 0
`
