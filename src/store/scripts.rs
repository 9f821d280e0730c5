//! Every Lua script the fleet store runs. Each runs atomically on the Redis server, which is what
//! makes compare-and-delete, the fenced lock and the shared budget safe between replicas; each
//! bounds what it trusts of the values it finds, since anyone who can write to Redis can plant them.

/// Takes the lock if free. A lock without an expiry, or with a longer one than ours, gets ours:
/// only replicas write the lock, and they always set `lock_ttl`, so such a lock was planted (or
/// left by a replica with other settings) and must not hold logins back for longer.
pub(super) const LOCK: &str = r#"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 or ttl > tonumber(ARGV[2]) then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"#;

/// Releases the lock only if this holder still has it (it may have expired and been taken).
pub(super) const UNLOCK: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end
"#;

/// Extends the lock only if this holder still has it.
pub(super) const EXTEND: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) else return 0 end
"#;

/// Deletes the token only if it is still the one the caller saw die (by digest).
pub(super) const DELETE_IF: &str = r#"
local v = redis.call('GET', KEYS[1])
if v and string.sub(v, 1, 64) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end
"#;

/// Puts a refresh token back (KEYS[1]) unless the one there was issued later (its leading
/// `{issued ms}:`). A value the caller could not read (ARGV[4] = '1') is replaced: left alone it
/// would keep the fleet from sharing again. When the store held no value, or one without a date
/// (it lost its data, or this is a new fleet), the settling window (KEYS[2], ARGV[3] ms) starts,
/// unless it already runs. A value only this caller cannot read (another key, a clock ahead)
/// starts none: that is not a loss, and would start one at every look.
pub(super) const RESTORE_GRANT: &str = r#"
local v = redis.call('GET', KEYS[1])
local issued = v and tonumber(string.match(v, '^(%d+):'))
if issued and ARGV[4] ~= '1' and issued > tonumber(ARGV[2]) then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
if not issued then redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[3]) end
return 1
"#;

/// The settling window's remaining ms (0: none). One longer than ARGV[1], or without an expiry,
/// was not set by a replica and is cut to ARGV[1], so that it cannot hold refreshes back forever.
pub(super) const SETTLING: &str = r#"
local ttl = redis.call('PTTL', KEYS[1])
if ttl == -2 then return 0 end
if ttl < 0 or ttl > tonumber(ARGV[1]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  return tonumber(ARGV[1])
end
return ttl
"#;

/// GCRA on the server's clock: returns the wait in ms (0 = go now), or -wait when refused.
/// No replica reserves further ahead than `reach`: a stored time beyond it was not written by
/// one, and is treated as no reservation rather than holding requests back.
pub(super) const RATE: &str = r#"
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local interval, tolerance, max_wait, pushback, reach = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now or tat > now + reach then tat = now end
if pushback > 0 then
  local pushed = now + pushback + tolerance
  if pushed > tat then tat = pushed end
  redis.call('SET', KEYS[1], tat, 'PX', pushback + tolerance + 1000)
  return 0
end
local allowed = tat - tolerance
if allowed < now then allowed = now end
local wait = allowed - now
if wait > max_wait then return -wait end
redis.call('SET', KEYS[1], tat + interval, 'PX', tat + interval - now + 1000)
return wait
"#;
