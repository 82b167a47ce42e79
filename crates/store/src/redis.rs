//! The Redis store. This file owns the key layout and every Lua script; nothing else in Coretex
//! names a Redis key.
//!
//! # Key layout (all under a configurable prefix `P`, default `coretex:`)
//!
//! A key that stands for one named thing puts the name between braces: `job:{acme~order-42}`.
//! No name holds a brace (ids, tenants, scopes and plugin names are identifiers; see
//! [`crate::ids`]), so no name — whatever a client chooses — can make its key equal another's
//! or one of the host's own (a job named `idx` is `dlq:{…~idx}`, never the index `idx:dlq`;
//! a workflow `w1:v:2` is `wf:{…~w1:v:2}`, never version 2 of `w1`).
//!
//! # Shards
//!
//! Jobs and runs live in one of S logical shards ([`crate::shards`]; S is [`StoreOptions::shards`]
//! when the store is first written, 12 by default, and kept in `P layout` from then on). A
//! record's shard is a stable hash of its id, and every key of shard `i` starts with `P{tag}:`,
//! where `{tag}` is the shard's Redis Cluster hash tag ([`crate::shards::shard_tags`]: `{s0}`,
//! `{s1.3}`, …; Redis Cluster hashes a key by the first braced part alone). So a shard's keys —
//! its jobs, their dead letters, the shard's own indexes — are in one hash slot, and every
//! script touches the keys of one shard only, which Redis Cluster requires of a script. Lists
//! are the merge of the shards' own lists ([`crate::shards::merge`]); a count, a due query or
//! a prune asks every shard. The other families have a tag each (`{c}` config, `{w}`
//! workflows, `{p}` plugins: small, and each written by scripts that touch its index too);
//! locks and the secret are one key each. The same layout runs on one Redis (`redis://`) and on
//! Redis Cluster (`redis+cluster://`): on one Redis a batched script carries the jobs of every
//! shard in one call; on a cluster, one call per shard.
//!
//! | key | type | what |
//! |---|---|---|
//! | `P layout` | string | `shards={S}`: the shard count this store was first written with |
//! | `S job:{id}` | hash | the lean record (see "The job record" below): `state`, `c` (created), `u` (updated at), `topic`, `p` (the payload, JSON), `x` (the rest of the spec, JSON, when there is any), `h` (the history), `team`, `trace`, `tenant`, `run`, `deadline`, `hbt` (each only when set and not implied by the id), and the changing fields (`w` the worker's id, `worker_instance`, `lease`, `r` result, `err` error, `sd`/`sr` safety decision and reason, `reason`, `ms` execution time, `ec` the effective config or `ecr` its reference); a value over 64 bytes in pieces, `{name}#2` … |
//! | `S cfg:{ref}` | string | an effective config too large to inline, stored once per shard under `ref` (SHA-256 of its JSON, base64url) for every job of the shard dispatched with it; it expires `job_ttl` after the last of them was dispatched or finished |
//! | `S idem:{tenant~key}` | string | idempotency key → job id (a tenant holds no `~`: one key per pair), in the shard of `tenant~key` |
//! | `S idx:recent` | zset | the shard's live jobs, scored by `updated_at` |
//! | `S idx:state:{STATE}` | zset | live jobs in a live state, scored by the time they entered it (or a recheck time set by the scheduler) |
//! | `S idx:tenant:{t}` | zset | the tenant's live jobs, scored by `updated_at` (topic and team filters are answered by walking the tenant or recent index) |
//! | `S idx:done`, `S idx:done:{t}` | zset | finished jobs, the shard's and a tenant's: paged indexes (below), each page number scored by the least `updated_at` its page holds |
//! | `S idx:done:{n}`, `S idx:done:{t}:{n}` | zset | a page of finished jobs scored by `updated_at`, [`StoreOptions::index_page`] entries (64) |
//! | `S idx:trace:{t}` | zset | the shard's jobs of a trace, scored by `created_at`, but for the one it is named after (a job submitted without a trace starts its own, named after it: it is listed from its record, and most traces need no key at all); a create clears its TTL, a job's finish sets it (so a job still live a TTL after a sibling that finished later than it was created drops out of the trace listing; its record stays) |
//! | `S idx:deadline` | zset | non-terminal jobs with a deadline, scored by it |
//! | `S idx:names` | set | the shard's tenant index keys (live and finished), for pruning |
//! | `S dlq:{id}` | string | a dead letter (JSON), in its job's shard |
//! | `S idx:dlq`, `S idx:dlq:{tenant}` | zset | dead letters by time, all and per tenant (a tenant's list, and its cursor, never meet another tenant's entry) |
//! | `S run:{id}` | hash | a workflow run: `doc` (the whole run, JSON), `rev` (its revision, for compare-and-set), `status`; once the run has finished it expires `job_ttl` after its last save, as a job does |
//! | `S runs:all`, `S runs:wf:{workflow_id}`, `S runs:org:{org}`, `S runs:status:{status}` | zset | the shard's runs scored by `started_at`; a save moves the run between status indexes in the same script; entries of expired runs are dropped by `run_prune_indexes` |
//! | `S runs:names` | set | the `runs:wf:{…}` and `runs:org:{…}` index keys, for pruning |
//! | `P{c}:config:{scope}` | hash | `data`, `revision`, `updated_at` |
//! | `P{c}:configs` | zset | the scopes that hold a document, all scored 0 (listed by key: a scope kind, or an org's workflows and steps, is one lexicographic range) |
//! | `P{w}:wf:{id}` | hash | a workflow's `latest` version number (kept when it is deleted, so a workflow created again under its id continues the numbering) and, while it is live, its JSON `doc` |
//! | `P{w}:wf:{id}:v:{n}` | string | version `n` of a workflow (JSON), written once (`SET NX`); kept after a delete for the runs following it |
//! | `P{w}:wfs` | zset | the live workflow ids, all scored 0 (listed by id: an org's ids, `org~…`, are one lexicographic range) |
//! | `P{p}:plugin:{name}` | hash | an uploaded plugin: `bytes` (the component), `hash` (its SHA-256, hex), `updated_at` |
//! | `P{p}:plugins` | set | the names of the uploaded plugins |
//! | `P lock:{name}` | string | the owner token, with a TTL (a run's lock is `lock:{wf-run:id}`, held by the replica advancing the run) |
//! | `P secret:bus` | string | the replicas' shared secret, the key of the bus leases (base64; written once, `SET NX`) |
//!
//! (`S` is a shard's prefix, `P{tag}:`.) The layout changed with the shards: a store written by
//! an older build is not read (start with a fresh key prefix, or let the old jobs finish on the
//! old build first).
//!
//! # The job record
//!
//! A retained job costs Redis its hash, its key (and the key's TTL entry) and its index
//! entries. The hash is kept within Redis's compact encoding (a listpack: the fields in one
//! allocation), which Redis keeps only while every value is at most 64 bytes
//! (`hash-max-listpack-value`): one longer value turns the hash into a table of separately
//! allocated entries, about four times the size. So the spec is not stored as one JSON
//! document: its payload and the rest go in fields of their own, and what the id already says
//! (the tenant, a trace named after the job) or what has a field anyway (topic, team, run,
//! deadline, creation time) is left out of it and put back when the job is read; a value still
//! longer than 64 bytes (a payload, a result, a waiting reason) is stored in 64-byte pieces
//! ([`LUA_PIECES`]). The history is one field of compact events (`{ms after created},{state code}[,{note as JSON}]`, one a
//! line, about 5 bytes each where the JSON events took 55), appended by the scripts; the
//! fields have short names but for the state, topic and the few a live job needs (its worker's
//! instance, lease, waiting reason: a finished record drops the first two), since a listpack
//! holds each name in every record. A finished record loses its lease and worker instance. An
//! effective config longer than 48 bytes — every
//! job of a tenant or team carries the same merged document — is stored once under its digest
//! (`cfg:{ref}`) and referenced (`ecr`); a shorter one, such as the empty config, inline (`ec`).
//! Figures are in the README's Performance section (`benches/memory.sh`).
//!
//! A record written by the version before (its whole spec in `spec`, its history as JSON
//! events `h:1` … `h:{hn}`, the long field names, its tenant and trace) is still read, and
//! moved on: new events go to `h` after the old ones, and the reader (the scripts too, for
//! `c`/`created`, `u`/`updated_at` and `w`/`worker_id`) prefers a short field name to its
//! long one. (A replica of that version reads no lean record: upgrade every
//! replica before it serves reads, or accept that its reads miss the new jobs meanwhile.)
//!
//! # Finished jobs' indexes are paged
//!
//! Retained finished jobs are nearly all of a store's jobs, and a sorted-set entry in Redis's
//! table encoding costs ~136 bytes (the member, a skip-list node, a hash-table entry), where
//! one in a sorted set of at most 128 entries (`zset-max-listpack-entries`), kept in one
//! allocation, costs ~50. So a job that finishes leaves the live indexes (recent, tenant,
//! state) for two paged ones: `idx:done` (the shard's) and `idx:done:{tenant}`, each a
//! directory of pages, sorted sets of [`StoreOptions::index_page`] entries (64). The directory
//! scores each page by the least score it may hold, so the pages split the scores into ranges,
//! newest on top: a finish goes to the top page until that is full, then to a new one, which
//! takes the full one's entries that score as much or more; a late one (older than the top
//! page's range) to the page whose range holds it. A listing walks the pages from the one holding its cursor down,
//! as if they were one sorted set, and merges that walk with the live index's (a state
//! filter walks only the half its state can be in: a finished state's listing filters the
//! finished jobs of the shard or tenant by state). A prune drops an expired job's page entry
//! and a page left empty. Finished jobs are counted by no state ([`JobStore::count_jobs`]).
//! A finished job of a store written before the paged indexes stays in the recent, tenant and
//! state indexes, where it is listed and pruned as before.
//!
//! # Recheck times are state-index scores
//!
//! A job's score in `idx:state:{STATE}` is its recheck time: when it entered the state, or the
//! [`Annotation::recheck_at`] set since. [`JobStore::jobs_due`] is a score range, a
//! [`Holding::since`] is the score read back, and [`PARKED`] is a score: 2^52 ms is past any
//! real time (some 140,000 years), yet a sorted-set score is a double, exact up to 2^53, so a
//! parked job's score neither rounds nor falls inside a due query's range.
//!
//! # The transition script
//!
//! A state change is one `EVALSHA`: read the current state, check the move against the table
//! (the Lua table is generated from [`crate::job::TRANSITIONS`] when the store starts), then set
//! the fields, append to the history, move the job between state indexes, re-score the recent and
//! tenant indexes (or, for a finish, move it to the paged ones), drop the deadline entry,
//! the lease and the worker's instance of a finished job, set its TTL and,
//! for a failure that is dead-lettered, write the DLQ entry — all or nothing, in one round trip.
//! A transition a worker's report asks for carries its claim (worker and lease), and the script
//! first checks it against the job's recorded assignment ([`Claim::admits`], spelled again in
//! Lua): a claim the job does not admit answers `other` and changes nothing.
//! A call carries a batch of transitions (and the create script a batch of jobs): their
//! sorted-set writes are gathered and sent at the end as one `ZREM` and one `ZADD` per index
//! key ([`LUA_INDEX_WRITES`]), since a call from Lua into Redis costs more than the set
//! operation it runs.
//! The original used WATCH/MULTI, which needs a dedicated connection per attempt and retries
//! under contention; a script needs neither and is safe on the shared multiplexed connection.
//! Keys are built inside the scripts from each job's shard prefix (which the call names as its
//! key on a cluster, so the cluster client routes it to the shard's node): one round trip per
//! batch, on one Redis or on a cluster.

use std::sync::Arc;
use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{AsyncCommands, Script};
use async_trait::async_trait;
use serde_json::Value;
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::*;
use crate::job::{Job, JobEvent, JobSpec, JobState, Priority, TRANSITIONS};
use crate::time::now_ms;
use crate::workflow::definition::{Run, Status, Workflow};

/// On a Redis Cluster, a script that writes first checks that its slot is not being moved:
/// two keys of the slot (its first key, and a name next to it that never exists) in one
/// command. A slot that stays put answers 0; one being moved (`MIGRATING` on its source,
/// `IMPORTING` on its target) refuses a multi-key command with a key missing (`TRYAGAIN`, or
/// `ASK` when all are), which stops the script before its first write — so a script never runs
/// half on either side of a move, and never makes on the target a key the source still holds.
/// Its caller is answered "unavailable" and tries again (a batch of transitions by the event
/// stream's redelivery, a create by its client, a prune at its next round): a shard's writes
/// wait out the move of its slot. On one Redis it is a cheap `EXISTS` answered 0, and the batch
/// scripts, which name no key there, skip it.
const LUA_GUARD: &str = r#"
local function guard()
  local key = KEYS[1]
  if key then redis.call('EXISTS', key, key .. '#unmoved') end
end
"#;

/// Sorted-set writes gathered over a batch script and sent at its end: one `ZREM` and one `ZADD`
/// per index key for the whole batch instead of one call per job. A call from Lua costs more
/// than the set operation it runs (argument conversion, command dispatch, the reply), and the
/// create and transition scripts make most of theirs on indexes. Removals go before additions,
/// so a job that moves twice within one batch ends where its last move put it.
const LUA_INDEX_WRITES: &str = r#"
local function braced(p, family, name) return p .. family .. ':{' .. name .. '}' end
local zadds, zrems = {}, {}
local function zadd(key, score, id)
  local m = zadds[key]
  if not m then m = {}; zadds[key] = m end
  m[id] = score
end
local function zrem(key, id)
  local m = zrems[key]
  if not m then m = {}; zrems[key] = m end
  m[id] = true
  local a = zadds[key]
  if a then a[id] = nil end
end
-- A finished job's entries go to paged indexes (see "Finished jobs' indexes are paged"):
-- `done(dir, score, id)` gathers them, `write_indexes` appends them.
local dones, done_names = {}, {}
-- `names` is the set the index is listed in (for pruning), joined when its first page is made.
local function done(dir, score, id, names)
  local m = dones[dir]
  if not m then m = {}; dones[dir] = m; done_names[dir] = names end
  m[#m + 1] = {tonumber(score), id}
end
local function zadd_pairs(key, a)
  for i = 1, #a, 4000 do redis.call('ZADD', key, unpack(a, i, math.min(i + 3999, #a))) end
end
-- Appends entries to the paged index `dir`: a page is `dir:{n}`, and `dir` scores each page
-- by the least score it may hold, so the pages split the scores into ranges, newest on top.
-- An entry goes to the top page until that holds PAGE entries; then to a new top page, which
-- takes the full one's entries that score as much or more. One older than the top page's
-- range (a late finish) goes to the page whose range holds it, or lowers the first page's
-- bound.
local function write_pages(dir, entries, names)
  table.sort(entries, function(a, b) return a[1] < b[1] end)
  local n, min, count = 0, nil, 0
  local top = redis.call('ZREVRANGE', dir, 0, 0, 'WITHSCORES')
  if #top > 0 then
    n, min = tonumber(top[1]), tonumber(top[2])
    count = redis.call('ZCARD', dir .. ':' .. n)
  elseif names then
    redis.call('SADD', names, dir)
  end
  local pending = {}
  for _, e in ipairs(entries) do
    local s, id = e[1], e[2]
    if n > 0 and s < min then
      local page = redis.call('ZREVRANGEBYSCORE', dir, s, '-inf', 'LIMIT', 0, 1)[1]
      if not page then
        page = redis.call('ZRANGE', dir, 0, 0)[1]
        redis.call('ZADD', dir, s, page)
        if tonumber(page) == n then min = s end
      end
      redis.call('ZADD', dir .. ':' .. page, s, id)
    else
      if n == 0 or (count >= PAGE and s > min) then
        -- A new top page from `s` up: the entries of the full one that score `s` or more
        -- (finishes written out of order, a few) move to it, so the ranges stay apart.
        local top = dir .. ':' .. n
        zadd_pairs(top, pending)
        pending = {}
        if n > 0 then
          pending = redis.call('ZRANGEBYSCORE', top, s, '+inf', 'WITHSCORES')
          if #pending > 0 then redis.call('ZREMRANGEBYSCORE', top, s, '+inf') end
          for i = 1, #pending, 2 do
            pending[i], pending[i + 1] = pending[i + 1], pending[i]
          end
        end
        n, min, count = n + 1, s, #pending / 2
        redis.call('ZADD', dir, s, n)
      end
      pending[#pending + 1] = s
      pending[#pending + 1] = id
      count = count + 1
    end
  end
  zadd_pairs(dir .. ':' .. n, pending)
end
local function write_indexes()
  for key, m in pairs(zrems) do
    local a = {}
    for id in pairs(m) do a[#a + 1] = id end
    for i = 1, #a, 4000 do redis.call('ZREM', key, unpack(a, i, math.min(i + 3999, #a))) end
  end
  for key, m in pairs(zadds) do
    local a = {}
    for id, score in pairs(m) do a[#a + 1] = score; a[#a + 1] = id end
    zadd_pairs(key, a)
  end
  for dir, entries in pairs(dones) do write_pages(dir, entries, done_names[dir]) end
end
"#;

/// The tenant a job id names (`{tenant}~…`, see [`crate::ids`]): a record stores its tenant
/// only when it is another.
const LUA_TENANT_OF: &str = r#"
local function tenant_of(id) return string.match(id, '^([^~]*)~') or '' end
"#;

/// Long values in pieces, so that a record keeps Redis's compact hash encoding (a listpack),
/// which holds values of up to 64 bytes (`hash-max-listpack-value`): past that, one value
/// turns the whole hash into a table of separately allocated entries, and it stays one. A
/// value over 64 bytes (or one that starts with `~`) is stored as `~{n}~{first piece}` under
/// its own name and pieces `{name}#2` … `{name}#{n}` of 64 bytes (bytes, not characters: the
/// reader joins the bytes before it decodes them). A value over 1 KB stays whole: its hash
/// could not stay compact (Redis allows it 128 entries, `hash-max-listpack-entries`), and its
/// pieces would only cost time. A reader that meets a value starting with
/// `~` whose pieces are not all there takes it as it is (a record of an earlier version). Only
/// the fields no script compares are cut: payload, spec, history, result, error, safety
/// decision and reason, the waiting reason, execution time and inline config.
const LUA_PIECES: &str = r#"
local PIECE, MAX_CUT = 64, 1024
local function put(fields, k, v)
  if #v <= PIECE and string.byte(v, 1) ~= 126 then
    fields[#fields + 1] = k
    fields[#fields + 1] = v
    return 1
  end
  if #v > MAX_CUT then
    -- Too long to keep the hash compact anyway: whole (marked, if it starts with the mark).
    fields[#fields + 1] = k
    fields[#fields + 1] = string.byte(v, 1) == 126 and ('~1~' .. v) or v
    return 1
  end
  local d, n = 1, 0
  while true do
    n = 1 + math.ceil(math.max(0, #v - (PIECE - 2 - d)) / PIECE)
    if #tostring(n) <= d then break end
    d = d + 1
  end
  local first = PIECE - 2 - d
  fields[#fields + 1] = k
  fields[#fields + 1] = '~' .. n .. '~' .. string.sub(v, 1, first)
  local pos = first + 1
  for i = 2, n do
    fields[#fields + 1] = k .. '#' .. i
    fields[#fields + 1] = string.sub(v, pos, pos + PIECE - 1)
    pos = pos + PIECE
  end
  return n
end
-- How many pieces a stored value says it has (1 for a whole one, 0 for none).
local function pieces_of(v)
  if not v then return 0 end
  if string.byte(v, 1) ~= 126 then return 1 end
  return tonumber(string.match(v, '^~(%d+)~')) or 1
end
-- The whole value of field `k` whose stored value is `v`.
local function full(key, k, v)
  if not v or string.byte(v, 1) ~= 126 then return v end
  local n, first = string.match(v, '^~(%d+)~(.*)$')
  if not n then return v end
  n = tonumber(n)
  if n < 2 then return first end
  local names = {}
  for i = 2, n do names[#names + 1] = k .. '#' .. i end
  local parts = redis.call('HMGET', key, unpack(names))
  local out = {first}
  for i = 1, #parts do
    if not parts[i] then return v end
    out[#out + 1] = parts[i]
  end
  return table.concat(out)
end
-- Whether field `k`, stored as `v`, holds `want` (its other pieces read only when its first
-- one matches).
local function holds(key, k, v, want)
  if not v then return false end
  local f = {}
  local n = put(f, k, want)
  if f[2] ~= v then return false end
  return n == 1 or full(key, k, v) == want
end
-- Drops pieces `from` … `to` of field `k`.
local function drop_pieces(key, k, from, to)
  if from > to then return end
  local names = {}
  for i = from, to do names[#names + 1] = k .. '#' .. i end
  redis.call('HDEL', key, unpack(names))
end
"#;

/// The record's shared Lua: a history event in its compact form, and the update fields of a
/// transition or annotation.
///
/// An event is `{ms after created},{state code}[,{note as a JSON string}]`, and a record's
/// events are one string, `\n`-separated (a JSON string holds no raw newline): about 5 bytes
/// for an event without a note, where the JSON form took 55, and one field however many.
/// An update field whose name starts with `@` is not a hash field: `@cfg` carries
/// `{ref} {json}`, an effective config too large to inline, stored once under its content's
/// digest (`cfg:{ref}`) and referenced from the job's `ecr`.
const LUA_RECORD: &str = r#"
local PIECED = {r = true, err = true, sd = true, sr = true, ms = true, ec = true}
local function event(created, at, state, note)
  local e = (tonumber(at) - (tonumber(created) or 0)) .. ',' .. CODE[state]
  if note ~= '' then e = e .. ',' .. note end
  return e
end
-- Appends `add` (events, one a line) to the history whose stored value is `v`. A history in
-- pieces keeps the pieces between its first and its last: only the first (which holds the
-- count) and the last ones are written again, so a long history costs each transition a piece
-- or two, not all of them.
local function add_history(fields, key, v, add)
  if not v or v == '' then put(fields, 'h', add); return end
  local n, first = nil, nil
  if string.byte(v, 1) == 126 then n, first = string.match(v, '^~(%d+)~(.*)$') end
  n = tonumber(n)
  local last = n and n >= 2 and redis.call('HGET', key, 'h#' .. n)
  local tail = last and (last .. '\n' .. add)
  local total = tail and (n - 1 + math.ceil(#tail / PIECE))
  local head = tail and ('~' .. total .. '~' .. first)
  if not tail or #head > PIECE or total * PIECE > MAX_CUT then
    -- Whole, or cut again from the start (the count gained a digit, or the history outgrew
    -- its pieces): pieces it no longer has are dropped.
    local m = put(fields, 'h', full(key, 'h', v) .. '\n' .. add)
    drop_pieces(key, 'h', m + 1, pieces_of(v))
    return
  end
  fields[#fields + 1] = 'h'
  fields[#fields + 1] = head
  local pos = 1
  for i = n, total do
    fields[#fields + 1] = 'h#' .. i
    fields[#fields + 1] = string.sub(tail, pos, pos + PIECE - 1)
    pos = pos + PIECE
  end
end
-- The fields a finished record keeps no more (see the transition script).
local LIVE_ONLY = {lease = true, worker_instance = true}
local function add_fields(p, ttl, fields, first, last, finished)
  local cfg = nil
  for i = first, last, 2 do
    local k, v = ARGV[i], ARGV[i + 1]
    if finished and LIVE_ONLY[k] then
      -- (A dispatch written together with its job's finish.)
    elseif k == '@cfg' then
      local sp = string.find(v, ' ', 1, true)
      cfg = string.sub(v, 1, sp - 1)
      redis.call('SET', braced(p, 'cfg', cfg), string.sub(v, sp + 1), 'PX', ttl)
      fields[#fields + 1] = 'ecr'
      fields[#fields + 1] = cfg
    elseif PIECED[k] then
      put(fields, k, v)
    else
      fields[#fields + 1] = k
      fields[#fields + 1] = v
    end
  end
  return cfg
end
"#;

/// Creates a batch of jobs. ARGV: record TTL, idempotency TTL, then 16 per job: its shard's
/// prefix, the prefix of its idempotency key's shard, id, created_at, payload JSON (or ''), the
/// rest of the spec (see [`spec_rest`]; or ''), tenant, topic, team, trace, deadline, the
/// PENDING event (compact), idempotency key (or '' when there is none, or when the key was
/// reserved in another shard already, see [`RedisStore::reserve_key`]), PENDING index score,
/// run id, heartbeat timeout (ms, or empty). Answers two per job: `created` or `exists`, and the
/// id (for `exists`, of the job that already holds the id or the key).
/// A field that would hold what the id already says (the tenant, a trace named after the job)
/// or nothing (an empty team) is left out.
const LUA_CREATE: &str = r#"
guard()
local idem_ttl = ARGV[2]
local named, persisted = {}, {}
local out = {}
local function create(p, ip, id, created, payload, rest, tenant, topic, team, trace, deadline, event, idem, score, run, hbt)
  local key = braced(p, 'job', id)
  if idem ~= '' then
    local ik = braced(ip, 'idem', tenant .. '~' .. idem)
    local existing = redis.call('GET', ik)
    if existing then return 'exists', existing end
    if redis.call('EXISTS', key) == 1 then return 'exists', id end
    redis.call('SET', ik, id, 'PX', idem_ttl)
  elseif redis.call('EXISTS', key) == 1 then
    return 'exists', id
  end
  local f = {'state', 'PENDING', 'c', created, 'u', created, 'topic', topic}
  put(f, 'h', event)
  if payload ~= '' then put(f, 'p', payload) end
  if rest ~= '' then put(f, 'x', rest) end
  if tenant ~= tenant_of(id) then f[#f + 1] = 'tenant'; f[#f + 1] = tenant end
  if team ~= '' then f[#f + 1] = 'team'; f[#f + 1] = team end
  if trace ~= id then f[#f + 1] = 'trace'; f[#f + 1] = trace end
  if run ~= '' then f[#f + 1] = 'run'; f[#f + 1] = run end
  if hbt ~= '' then f[#f + 1] = 'hbt'; f[#f + 1] = hbt end
  if deadline ~= '' then
    f[#f + 1] = 'deadline'; f[#f + 1] = deadline
    zadd(p .. 'idx:deadline', deadline, id)
  end
  redis.call('HSET', key, unpack(f))
  zadd(p .. 'idx:state:PENDING', score, id)
  zadd(p .. 'idx:recent', created, id)
  local tk = braced(p, 'idx:tenant', tenant)
  zadd(tk, created, id)
  if not named[tk] then named[tk] = true; redis.call('SADD', p .. 'idx:names', tk) end
  -- A job that starts its trace (the trace named after it) is listed from its own record;
  -- the others join the trace's index. A finished sibling may have set the index's TTL: a
  -- live job keeps its trace.
  if trace ~= id then
    local trk = braced(p, 'idx:trace', trace)
    zadd(trk, created, id)
    if not persisted[trk] then persisted[trk] = true; redis.call('PERSIST', trk) end
  end
  return 'created', id
end
for i = 3, #ARGV, 16 do
  local verdict, id = create(ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4],
    ARGV[i + 5], ARGV[i + 6], ARGV[i + 7], ARGV[i + 8], ARGV[i + 9], ARGV[i + 10], ARGV[i + 11],
    ARGV[i + 12], ARGV[i + 13], ARGV[i + 14], ARGV[i + 15])
  out[#out + 1] = verdict
  out[#out + 1] = id
end
write_indexes()
return out
"#;

/// Applies a batch of transitions, each on its own (one failing its check does not stop the
/// others). ARGV: record TTL, then per transition: its job's shard prefix, id, to, at, the event's note (a JSON
/// string, or ''), dead letter JSON (or ''), dead letter time, the claim's worker and lease (or
/// '' and ''), the number of via states `v`, then `v` pairs of via state and the time it was
/// entered (the walk of `Transition::via`), the number of field pairs `n`, then `n` field/value
/// pairs. Answers five per transition: `ok` (with the state it left), `same`, `illegal` (with
/// the current state), `other` (the claim is not the job's assignment) or `missing`; then the
/// job's run id, its tenant and its `created` time (or '').
///
/// A record written before the compact history keeps its events in `h:1` … `h:{hn}`; the new
/// ones go to `h` after them (the reader joins the two).
const LUA_TRANSITION: &str = r#"
guard()
local ttl = ARGV[1]
local out = {}
local function transition(p, id, to, at, note, dl, dlat, cw, cl, vfirst, vlast, first, last)
  local key = braced(p, 'job', id)
  -- (`worker_id` and `created` are the long names of `w` and `c`, in records written before.)
  local h = redis.call('HMGET', key, 'state', 'tenant', 'trace', 'run', 'h', 'deadline',
    'w', 'lease', 'c', 'reason', 'ecr', 'worker_id', 'created', 'worker_instance')
  local cur = h[1]
  if not cur then return 'missing', '', '', '', '' end
  local worker = h[7] or h[12]
  local run, tenant, created = h[4] or '', h[2] or tenant_of(id), h[9] or h[13] or ''
  -- A worker's claim: the recorded lease (and worker) must be its own; with none recorded,
  -- the recorded worker; with neither, the host has verified the lease (Claim::admits).
  if cw ~= '' and ((h[8] and h[8] ~= cl) or (worker and worker ~= cw)) then
    return 'other', cur, run, tenant, created
  end
  if cur == to then return 'same', cur, run, tenant, created end
  local fields = {'state', to, 'u', at}
  local add = {}
  -- The walk through the via states: after the current one when it is on the path.
  local start = vfirst
  for a = vfirst, vlast, 2 do
    if ARGV[a] == cur then start = a + 2 end
  end
  local prev = cur
  for a = start, vlast, 2 do
    if not ALLOWED[prev .. '>' .. ARGV[a]] then prev = nil; break end
    prev = ARGV[a]
  end
  if prev and ALLOWED[prev .. '>' .. to] then
    for a = start, vlast, 2 do
      add[#add + 1] = event(created, ARGV[a + 1], ARGV[a], '')
    end
  elseif not ALLOWED[cur .. '>' .. to] then
    return 'illegal', cur, run, tenant, created
  end
  add[#add + 1] = event(created, at, to, note)
  add_history(fields, key, h[5], table.concat(add, '\n'))
  local cfg = add_fields(p, ttl, fields, first, last, TERMINAL[to]) or h[11]
  redis.call('HSET', key, unpack(fields))
  if h[10] then
    redis.call('HDEL', key, 'reason')
    drop_pieces(key, 'reason', 2, pieces_of(h[10]))
  end
  zrem(p .. 'idx:state:' .. cur, id)
  if TERMINAL[to] then
    -- A finished job leaves the live indexes for the paged ones, where it stays.
    zrem(p .. 'idx:recent', id)
    zrem(braced(p, 'idx:tenant', tenant), id)
    done(p .. 'idx:done', at, id)
    done(braced(p, 'idx:done', tenant), at, id, p .. 'idx:names')
    -- A record expires a TTL after it finished (a live job never does), its trace with it,
    -- and the config it references no sooner. Its lease and its worker's instance, which only
    -- a report on the live job and the reconciler's watch over it use, go.
    redis.call('PEXPIRE', key, ttl)
    if h[3] and h[3] ~= id then redis.call('PEXPIRE', braced(p, 'idx:trace', h[3]), ttl) end
    if h[6] then zrem(p .. 'idx:deadline', id) end
    if cfg then redis.call('PEXPIRE', braced(p, 'cfg', cfg), ttl, 'GT') end
    if h[8] or h[14] then redis.call('HDEL', key, 'lease', 'worker_instance') end
  else
    zadd(p .. 'idx:state:' .. to, at, id)
    zadd(p .. 'idx:recent', at, id)
    zadd(braced(p, 'idx:tenant', tenant), at, id)
  end
  if dl ~= '' then
    redis.call('SET', braced(p, 'dlq', id), dl)
    redis.call('ZADD', p .. 'idx:dlq', dlat, id)
    redis.call('ZADD', braced(p, 'idx:dlq', tenant), dlat, id)
  end
  return 'ok', cur, run, tenant, created
end
local i = 2
while i <= #ARGV do
  local vfirst = i + 10
  local vlast = vfirst + 2 * tonumber(ARGV[i + 9]) - 2
  local n = tonumber(ARGV[vlast + 2])
  local first = vlast + 3
  local last = first + 2 * n - 1
  local status, cur, run, tenant, created = transition(ARGV[i], ARGV[i + 1], ARGV[i + 2],
    ARGV[i + 3], ARGV[i + 4], ARGV[i + 5], ARGV[i + 6], ARGV[i + 7], ARGV[i + 8], vfirst, vlast,
    first, last)
  out[#out + 1] = status
  out[#out + 1] = cur
  out[#out + 1] = run
  out[#out + 1] = tenant
  out[#out + 1] = created
  i = last + 1
end
write_indexes()
return out
"#;

/// ARGV: prefix, record TTL, id, the expected state, the reason (or ''), the reason as a JSON
/// string (the event's note), the recheck score (or ''), the time, then field/value pairs.
const LUA_ANNOTATE: &str = r#"
guard()
local p, ttl, id, expect = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local key = braced(p, 'job', id)
local h = redis.call('HMGET', key, 'state', 'reason', 'c', 'h', 'created')
if not h[1] then return 'missing' end
h[3] = h[3] or h[5]
if h[1] ~= expect then return 'skip' end
local fields = {}
if ARGV[5] ~= '' and not holds(key, 'reason', h[2], ARGV[5]) then
  local n = put(fields, 'reason', ARGV[5])
  drop_pieces(key, 'reason', n + 1, pieces_of(h[2]))
  add_history(fields, key, h[4], event(h[3], ARGV[8], expect, ARGV[6]))
end
add_fields(p, ttl, fields, 9, #ARGV)
if #fields > 0 then redis.call('HSET', key, unpack(fields)) end
if ARGV[7] ~= '' then redis.call('ZADD', p .. 'idx:state:' .. expect, ARGV[7], id) end
return 'ok'
"#;

/// Walks an index from the cursor down, filtering on the indexed hash fields, up to `limit`
/// matches or `budget` entries looked at. Ties on the score are ordered by id, compared byte by
/// byte (Lua's `<` would use the locale).
const LUA_BYTE_LT: &str = r#"
local function lt(a, b)
  local la, lb = #a, #b
  for i = 1, math.min(la, lb) do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x < y end
  end
  return la < lb
end
"#;

const LUA_LIST: &str = r#"
local p, idx = ARGV[1], ARGV[2]
local maxs, cs, cid = '+inf', nil, ARGV[4]
if ARGV[3] ~= '' then maxs = ARGV[3]; cs = tonumber(ARGV[3]) end
local limit, budget = tonumber(ARGV[5]), tonumber(ARGV[6])
local fs, ftopic, ften, fteam, fa, fb = ARGV[7], ARGV[8], ARGV[9], ARGV[10], ARGV[11], ARGV[12]
local items, scanned, offset, ls, lid = {}, 0, 0, '', ''
-- A trace's own job (the one it is named after) is in no index: it is met from its record,
-- in its place by creation time, once, when it is after the cursor.
local root, rs, rss = ARGV[13], nil, nil
if root ~= '' then
  -- (A record leaves out a trace named after its job.)
  local r = redis.call('HMGET', p .. 'job:{' .. root .. '}', 'trace', 'c', 'created')
  r[2] = r[2] or r[3]
  if (r[1] or root) == root and r[2] then
    rss = r[2]
    rs = tonumber(rss)
    if cs and (rs > cs or (rs == cs and not lt(root, cid))) then rs = nil end
  end
end
local function visit(id, s)
  scanned = scanned + 1
  ls, lid = s, id
  local h = redis.call('HMGET', p .. 'job:{' .. id .. '}', 'state', 'topic', 'tenant', 'team', 'u',
    'updated_at')
  h[5] = h[5] or h[6]
  if h[1] and (fs == '' or h[1] == fs) and (ftopic == '' or h[2] == ftopic)
    and (ften == '' or (h[3] or tenant_of(id)) == ften) and (fteam == '' or h[4] == fteam)
    and (fa == '' or tonumber(h[5]) > tonumber(fa)) and (fb == '' or tonumber(h[5]) < tonumber(fb)) then
    items[#items + 1] = id
    items[#items + 1] = s
    if #items == 2 * limit then return {items, ls, lid, 1} end
  end
  if scanned >= budget then return {items, ls, lid, 1} end
end
-- The next entries from the cursor down: of the index, or (`ARGV[14]` = '1') of the pages of
-- the paged index `idx`, newest page first, from the one whose range holds the cursor.
local paged, pages_seen, page = ARGV[14] == '1', 0, nil
local function next_chunk()
  if not paged then
    local c = redis.call('ZREVRANGEBYSCORE', idx, maxs, '-inf', 'WITHSCORES', 'LIMIT', offset, 256)
    offset = offset + #c / 2
    return c
  end
  while true do
    if not page then
      local d = redis.call('ZREVRANGEBYSCORE', idx, maxs, '-inf', 'LIMIT', pages_seen, 1)
      if #d == 0 then return d end
      pages_seen, page, offset = pages_seen + 1, idx .. ':' .. d[1], 0
    end
    local c = redis.call('ZREVRANGEBYSCORE', page, maxs, '-inf', 'WITHSCORES', 'LIMIT', offset, 256)
    offset = offset + #c / 2
    if #c > 0 then return c end
    page = nil
  end
end
while true do
  local chunk = next_chunk()
  if #chunk == 0 then
    if rs then
      rs = nil
      local page = visit(root, rss)
      if page then return page end
    end
    return {items, '', '', 0}
  end
  for i = 1, #chunk, 2 do
    local id, s = chunk[i], chunk[i + 1]
    if id ~= root and not (cs and tonumber(s) == cs and not lt(id, cid)) then
      local n = tonumber(s)
      if rs and (rs > n or (rs == n and lt(id, root))) then
        rs = nil
        local page = visit(root, rss)
        if page then return page end
      end
      local page = visit(id, s)
      if page then return page end
    end
  end
end
"#;

/// Up to `ARGV[3]` `(member, score)` pairs of the index `KEYS[1]` strictly after the cursor
/// (`ARGV[1]` score, `ARGV[2]` member; empty for the start), in `(score, member)` descending
/// order. Skipping the members that tie with the cursor happens here, atomically, however many
/// there are: a page boundary inside a long tie neither skips nor repeats an entry.
const LUA_AFTER: &str = r#"
local maxs, cs, cid = '+inf', nil, ARGV[2]
if ARGV[1] ~= '' then maxs = ARGV[1]; cs = tonumber(ARGV[1]) end
local n = tonumber(ARGV[3])
local out, offset = {}, 0
while true do
  local chunk = redis.call('ZREVRANGEBYSCORE', KEYS[1], maxs, '-inf', 'WITHSCORES', 'LIMIT', offset, 256)
  if #chunk == 0 then return out end
  offset = offset + #chunk / 2
  for i = 1, #chunk, 2 do
    local id, s = chunk[i], chunk[i + 1]
    if not (cs and tonumber(s) == cs and not lt(id, cid)) then
      out[#out + 1] = id
      out[#out + 1] = s
      if #out >= 2 * n then return out end
    end
  end
end
"#;

/// KEYS: the workflow's hash, the new version's key, the workflow index. ARGV: the version,
/// its doc, the workflow id, `create` ('1' to create a workflow that is not live, '' to update
/// one that is). A version is written once: its number comes after the latest ever stored,
/// which a delete keeps.
const LUA_WORKFLOW_PUT: &str = r#"
local cur = tonumber(redis.call('HGET', KEYS[1], 'latest') or '0')
local live = redis.call('HEXISTS', KEYS[1], 'doc') == 1
if cur + 1 ~= tonumber(ARGV[1]) or live == (ARGV[4] == '1') then return {'conflict', cur} end
if redis.call('SET', KEYS[2], ARGV[2], 'NX') == false then return {'conflict', cur} end
redis.call('HSET', KEYS[1], 'latest', ARGV[1], 'doc', ARGV[2])
redis.call('ZADD', KEYS[3], 0, ARGV[3])
return {'ok', cur + 1}
"#;

/// KEYS: run hash, its workflow index, the all-runs index, its new status index, the names set,
/// its org index. ARGV: expected revision, doc, status, score, id, status index prefix, TTL in
/// ms (empty while the run has not finished).
const LUA_RUN_PUT: &str = r#"
guard()
local cur = tonumber(redis.call('HGET', KEYS[1], 'rev') or '0')
if cur ~= tonumber(ARGV[1]) then return {'conflict', cur} end
local old = redis.call('HGET', KEYS[1], 'status')
if old then redis.call('ZREM', ARGV[6] .. old, ARGV[5]) end
redis.call('HSET', KEYS[1], 'rev', cur + 1, 'status', ARGV[3], 'doc', ARGV[2])
if ARGV[7] ~= '' then redis.call('PEXPIRE', KEYS[1], ARGV[7]) end
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[5])
redis.call('ZADD', KEYS[6], ARGV[4], ARGV[5])
redis.call('SADD', KEYS[5], KEYS[2], KEYS[6])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[5])
redis.call('ZADD', KEYS[4], ARGV[4], ARGV[5])
return {'ok', cur + 1}
"#;

/// Drops the entries of the index `KEYS[1]` whose record (`ARGV[1]` .. id .. `}`) no longer exists,
/// among those scored before `ARGV[2]`: only a record last touched a TTL ago can have expired,
/// so the live ones looked at are the few old ones (a job or run that has not finished never
/// expires). Looks at up to `ARGV[4]` entries from offset `ARGV[3]` of that range, so one call
/// never holds Redis up for long. Returns how many went, how many are left in the index, and the
/// offset to go on from (-1 when the range is done).
const LUA_PRUNE: &str = r#"
guard()
local offset, removed, seen, budget = tonumber(ARGV[3]), 0, 0, tonumber(ARGV[4])
while seen < budget do
  local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[2], 'LIMIT', offset,
    math.min(256, budget - seen))
  if #ids == 0 then return {removed, redis.call('ZCARD', KEYS[1]), -1} end
  for _, id in ipairs(ids) do
    seen = seen + 1
    if redis.call('EXISTS', ARGV[1] .. id .. '}') == 0 then
      redis.call('ZREM', KEYS[1], id)
      removed = removed + 1
    else
      offset = offset + 1
    end
  end
end
return {removed, redis.call('ZCARD', KEYS[1]), offset}
"#;

/// The same for a paged index `KEYS[1]` (see "Finished jobs' indexes are paged"): walks its pages
/// whose range starts before `ARGV[2]`, oldest first, from the `ARGV[3]`th of them, dropping
/// their entries scored before it whose record is gone, and a page left empty (its key and its
/// place in the index). Answers as [`LUA_PRUNE`] does, counting pages: how many entries went,
/// how many pages are left, and the page to go on from (-1 when done).
const LUA_PRUNE_PAGES: &str = r#"
guard()
local dir, before = KEYS[1], '(' .. ARGV[2]
local offset, removed, seen, budget = tonumber(ARGV[3]), 0, 0, tonumber(ARGV[4])
while seen < budget do
  local pages = redis.call('ZRANGEBYSCORE', dir, '-inf', before, 'LIMIT', offset, 16)
  if #pages == 0 then return {removed, redis.call('ZCARD', dir), -1} end
  for _, n in ipairs(pages) do
    local page = dir .. ':' .. n
    local gone = {}
    for _, id in ipairs(redis.call('ZRANGEBYSCORE', page, '-inf', before)) do
      seen = seen + 1
      if redis.call('EXISTS', ARGV[1] .. id .. '}') == 0 then gone[#gone + 1] = id end
    end
    for i = 1, #gone, 4000 do
      redis.call('ZREM', page, unpack(gone, i, math.min(i + 3999, #gone)))
    end
    removed = removed + #gone
    if redis.call('EXISTS', page) == 0 then
      redis.call('ZREM', dir, n)
    else
      offset = offset + 1
    end
    if seen >= budget then break end
  end
end
return {removed, redis.call('ZCARD', dir), offset}
"#;

/// Entries one prune call looks at (a few milliseconds of Redis time).
const PRUNE_BUDGET: usize = 2048;

/// KEYS: the scope's hash, the `configs` index. ARGV: if-match (or ''), data, time, the
/// scope's key.
const LUA_CONFIG_PUT: &str = r#"
local cur = tonumber(redis.call('HGET', KEYS[1], 'revision') or '0')
if ARGV[1] ~= '' and tonumber(ARGV[1]) ~= cur then return {'conflict', cur} end
redis.call('HSET', KEYS[1], 'data', ARGV[2], 'revision', cur + 1, 'updated_at', ARGV[3])
redis.call('ZADD', KEYS[2], 0, ARGV[4])
return {'ok', cur + 1}
"#;

/// KEYS: the scope's hash, the `configs` index. ARGV: if-match (or ''), the scope's key.
const LUA_CONFIG_DELETE: &str = r#"
local cur = tonumber(redis.call('HGET', KEYS[1], 'revision') or '0')
if ARGV[1] ~= '' and tonumber(ARGV[1]) ~= cur then return {'conflict', cur} end
redis.call('ZREM', KEYS[2], ARGV[2])
return {'ok', redis.call('DEL', KEYS[1])}
"#;

const LUA_LOCK_ACQUIRE: &str = r#"
local holder = redis.call('GET', KEYS[1])
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
elseif holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"#;

const LUA_LOCK_RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#;

/// The Lua tables of legal moves, terminal states and the states' codes in the compact history
/// (see [`history_code`]), generated from the one table in [`crate::job`].
fn lua_state_tables() -> String {
    let mut s = String::from("local ALLOWED = {");
    for (from, tos) in TRANSITIONS {
        for to in *tos {
            s.push_str(&format!("['{from}>{to}']=true,"));
        }
    }
    s.push_str("}\nlocal TERMINAL = {");
    for st in JobState::ALL.iter().filter(|s| s.is_terminal()) {
        s.push_str(&format!("['{st}']=true,"));
    }
    s.push_str("}\nlocal CODE = {");
    for st in JobState::ALL {
        s.push_str(&format!("['{st}']='{}',", history_code(st)));
    }
    s.push_str("}\n");
    s
}

/// A state's one-character code in the compact history: its place in [`JobState::ALL`].
fn history_code(state: JobState) -> usize {
    JobState::ALL
        .iter()
        .position(|s| *s == state)
        .unwrap_or_default()
}

/// Reserves an idempotency key for a job whose own shard is another (on a cluster, where one
/// script cannot touch both shards). KEYS[1]: the key. ARGV: the job id, the key's TTL, and the
/// id the key may hold now to be taken over ('' for none). Answers the id the key holds after
/// the call: the job's own when it got the key.
const LUA_RESERVE: &str = r#"
local cur = redis.call('GET', KEYS[1])
if cur and cur ~= ARGV[3] then return cur end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return ARGV[1]
"#;

struct Scripts {
    annotate: Script,
    list: Script,
    after: Script,
    reserve: Script,
    config_put: Script,
    config_delete: Script,
    lock_acquire: Script,
    lock_release: Script,
    workflow_put: Script,
    run_put: Script,
    prune: Script,
    prune_pages: Script,
}

/// A connection to one Redis, or to a Redis Cluster: the two clients of the redis crate behind
/// one [`ConnectionLike`](::redis::aio::ConnectionLike), so every command and script is written
/// once. Both reconnect by themselves; the cluster client also follows MOVED and ASK replies
/// and reloads the slot map after a failover. A slot being moved refuses the scripts that
/// write to it until it has moved ([`LUA_GUARD`]).
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(Arc<ClusterConn>),
}

/// The cluster client, made anew when it stops answering. Under load, after a master died, the
/// redis crate's cluster connection was seen to time out every request — to the live masters
/// too — for minutes after the cluster had recovered (`benches/cluster.sh`); a connection made
/// afresh from the same seeds answered at once. So a run of timeouts and I/O errors makes the
/// next request build a new one (one at a time, at most every few seconds), which every request
/// after uses.
struct ClusterConn {
    client: ::redis::cluster::ClusterClient,
    current: parking_lot::RwLock<::redis::cluster_async::ClusterConnection>,
    /// Timeouts and I/O errors in a row.
    failures: std::sync::atomic::AtomicU32,
    /// When the connection was last made (ms).
    made_at: std::sync::atomic::AtomicI64,
    rebuilding: tokio::sync::Mutex<()>,
}

/// Timeouts or I/O errors in a row after which the cluster connection is made anew.
const CLUSTER_REBUILD_AFTER: u32 = 20;
/// The least time between two rebuilds of the cluster connection.
const CLUSTER_REBUILD_EVERY_MS: Millis = 5_000;

impl ClusterConn {
    async fn connect(client: ::redis::cluster::ClusterClient) -> ::redis::RedisResult<Self> {
        let conn = client.get_async_connection().await?;
        Ok(ClusterConn {
            client,
            current: parking_lot::RwLock::new(conn),
            failures: std::sync::atomic::AtomicU32::new(0),
            made_at: std::sync::atomic::AtomicI64::new(now_ms()),
            rebuilding: tokio::sync::Mutex::new(()),
        })
    }

    fn conn(&self) -> ::redis::cluster_async::ClusterConnection {
        self.current.read().clone()
    }

    /// Counts a request's outcome, and makes the connection anew after a run of failures.
    async fn note<T>(&self, result: &::redis::RedisResult<T>) {
        use std::sync::atomic::Ordering;
        let failed = matches!(result, Err(e) if e.is_timeout() || e.is_io_error()
            || e.is_connection_dropped() || e.is_connection_refusal());
        if !failed {
            self.failures.store(0, Ordering::Relaxed);
            return;
        }
        let run = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if run < CLUSTER_REBUILD_AFTER
            || now_ms() - self.made_at.load(Ordering::Relaxed) < CLUSTER_REBUILD_EVERY_MS
        {
            return;
        }
        let Ok(_one) = self.rebuilding.try_lock() else {
            return;
        };
        self.made_at.store(now_ms(), Ordering::Relaxed);
        match self.client.get_async_connection().await {
            Ok(fresh) => {
                *self.current.write() = fresh;
                self.failures.store(0, Ordering::Relaxed);
                tracing::warn!(
                    failures = run,
                    "the Redis Cluster connection stopped answering; made it anew"
                );
            }
            Err(e) => {
                tracing::warn!(error = %e, "the Redis Cluster connection could not be made anew")
            }
        }
    }
}

impl ::redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a ::redis::Cmd,
    ) -> ::redis::RedisFuture<'a, ::redis::Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => Box::pin(async move {
                let result = c.conn().req_packed_command(cmd).await;
                c.note(&result).await;
                result
            }),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a ::redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> ::redis::RedisFuture<'a, Vec<::redis::Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => Box::pin(async move {
                let result = c.conn().req_packed_commands(pipeline, offset, count).await;
                c.note(&result).await;
                result
            }),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(_) => 0,
        }
    }
}

/// The nodes of a `redis+cluster://[user:pass@]host:port,host:port,…` URL (any reachable
/// subset of the cluster's nodes), each as a `redis://` URL; `None` for a single-node URL.
fn cluster_nodes(url: &str) -> Option<Vec<String>> {
    let rest = url.strip_prefix("redis+cluster://")?;
    let (auth, hosts) = match rest.rsplit_once('@') {
        Some((auth, hosts)) => (format!("{auth}@"), hosts),
        None => (String::new(), rest),
    };
    Some(
        hosts
            .split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .map(|h| format!("redis://{auth}{}", h.trim_end_matches('/')))
            .collect(),
    )
}

pub struct RedisStore {
    conn: Conn,
    prefix: String,
    /// Each shard's key prefix, `P{tag}:`.
    shards: Vec<String>,
    opts: StoreOptions,
    scripts: Scripts,
    creates: Batchers,
    transitions: Batchers,
}

/// Most jobs one create or transition script call carries. A script blocks Redis while it runs
/// (~10–20 µs per job), so a cap keeps one batch from holding every other client up for long.
const MAX_BATCH: usize = 128;

/// Batch script calls one replica keeps in flight at once (each batch waits for a free one,
/// gathering whatever arrives meanwhile).
const BATCHES_IN_FLIGHT: usize = 4;

/// One job's arguments to a batched script, in one buffer (two allocations per job, however
/// many arguments).
#[derive(Default)]
struct Args {
    data: Vec<u8>,
    ends: Vec<usize>,
}

impl Args {
    fn with_capacity(count: usize, bytes: usize) -> Self {
        Args {
            data: Vec::with_capacity(bytes),
            ends: Vec::with_capacity(count),
        }
    }

    fn push(&mut self, arg: impl AsRef<[u8]>) -> &mut Self {
        self.data.extend_from_slice(arg.as_ref());
        self.ends.push(self.data.len());
        self
    }

    fn push_num(&mut self, n: i64) -> &mut Self {
        use std::io::Write;
        let _ = write!(self.data, "{n}");
        self.ends.push(self.data.len());
        self
    }

    fn iter(&self) -> impl Iterator<Item = &[u8]> {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        // Each end is pushed after its argument is written, so every range lies within `data`.
        starts
            .zip(self.ends.iter())
            .map(|(a, &b)| self.data.get(a..b).unwrap_or_default())
    }
}

/// One job's part of a batched script call (its arguments, which start with its shard's
/// prefix), and where its answer goes.
struct BatchItem {
    args: Args,
    reply: oneshot::Sender<StoreResult<Vec<String>>>,
}

/// Group commit for the two hot scripts (create and transition). Every call becomes an item on
/// a queue; one task takes the first item waiting and everything queued behind it (up to
/// [`MAX_BATCH`]) into a single `EVALSHA`, with up to [`BATCHES_IN_FLIGHT`] such calls
/// pipelined on the multiplexed connection. At a trickle every call goes alone, as fast as
/// before; under load the batches fill by themselves while earlier ones are in flight, and
/// Redis runs one script call — one parse, one Lua entry, one reply — for many jobs instead of
/// one per job. Each item's answer is `width` strings of the script's flat reply.
///
/// On one Redis one batcher carries the jobs of every shard. On a cluster each shard has its
/// own, whose calls name the shard's prefix as their key (so they are routed to the node that
/// holds the shard, and Redis checks the script's keys are in that slot) and whose calls in
/// flight are its own: a node that is slow or failing over holds up its own shards only.
struct Batcher {
    tx: mpsc::UnboundedSender<BatchItem>,
}

/// The longest a batched script call may take, answer included, before its callers are told
/// the store is unavailable (the write may still have happened: a create answered so is retried
/// by its client under its idempotency key, a transition is checked again by the reconciler).
const BATCH_CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a batcher stops waiting for replicas after a `WAIT` came up short (a master with no
/// replica attached, as right after a failover until the old master returns): every batch would
/// otherwise wait out the whole timeout, and the shard's throughput with it.
const WAIT_BACKOFF_MS: Millis = 5_000;

impl Batcher {
    fn start(
        conn: Conn,
        script: Script,
        head: Vec<String>,
        width: usize,
        route: Option<String>,
        wait_replicas: u8,
    ) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<BatchItem>();
        let script = Arc::new(script);
        let head = Arc::new(head);
        let route = Arc::new(route);
        // Until when (ms) this batcher writes without waiting for replicas.
        let wait_off_until = Arc::new(std::sync::atomic::AtomicI64::new(0));
        tokio::spawn(async move {
            let slots = Arc::new(Semaphore::new(BATCHES_IN_FLIGHT));
            while let Some(first) = rx.recv().await {
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    return;
                };
                let mut batch = vec![first];
                while batch.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(item) => batch.push(item),
                        Err(_) => break,
                    }
                }
                let (mut conn, script, head, route, wait_off_until) = (
                    conn.clone(),
                    script.clone(),
                    head.clone(),
                    route.clone(),
                    wait_off_until.clone(),
                );
                tokio::spawn(async move {
                    let wait = Wait {
                        replicas: wait_replicas,
                        off_until: &wait_off_until,
                    };
                    let call =
                        Self::call_once(&mut conn, &script, &head, route.as_deref(), &batch, wait);
                    // However the client fares with a node that went away (it reconnects and
                    // follows the slots on its own), a batch never holds its callers, or the
                    // batcher's calls in flight, longer than this.
                    let answer = match tokio::time::timeout(BATCH_CALL_TIMEOUT, call).await {
                        Ok(answer) => answer,
                        Err(_) => Err(::redis::RedisError::from((
                            ::redis::ErrorKind::Io,
                            "the batch call timed out",
                        ))),
                    };
                    Self::answer(batch, answer, width);
                    drop(slot);
                });
            }
        });
        Batcher { tx }
    }

    /// One `EVALSHA` for a batch, built as one command buffer (the script invocation helper of
    /// the redis crate copies every argument into a vector of its own, twice).
    async fn call_once(
        conn: &mut Conn,
        script: &Script,
        head: &[String],
        route: Option<&str>,
        batch: &[BatchItem],
        wait: Wait<'_>,
    ) -> ::redis::RedisResult<Vec<String>> {
        let count = 4 + head.len() + batch.iter().map(|i| i.args.ends.len()).sum::<usize>();
        let bytes = 64
            + route.map_or(0, str::len)
            + head.iter().map(String::len).sum::<usize>()
            + batch.iter().map(|i| i.args.data.len()).sum::<usize>();
        let mut cmd = ::redis::Cmd::with_capacity(count, bytes);
        cmd.arg("EVALSHA").arg(script.get_hash());
        match route {
            Some(key) => cmd.arg(1).arg(key),
            None => cmd.arg(0),
        };
        for a in head {
            cmd.arg(a);
        }
        for item in batch {
            for a in item.args.iter() {
                cmd.arg(a);
            }
        }
        let answer = Self::send(conn, &cmd, &wait).await;
        match answer {
            Err(e)
                if e.kind() == ::redis::ErrorKind::Server(::redis::ServerErrorKind::NoScript) =>
            {
                // A Redis that restarted (or was flushed, or a replica just promoted) lost the
                // script: load it (on every node of a cluster) and try once more.
                script.load_async(conn).await?;
                Self::send(conn, &cmd, &wait).await
            }
            other => other,
        }
    }

    /// Sends the batch's call; when waiting for replicas, followed by a `WAIT` in the same
    /// pipeline (so on the same node), answered once that many replicas have the batch — or
    /// after [`WAIT_REPLICAS_TIMEOUT_MS`]: the write stands on its master, and the batcher
    /// writes without waiting for [`WAIT_BACKOFF_MS`] (saying so once).
    async fn send(
        conn: &mut Conn,
        cmd: &::redis::Cmd,
        wait: &Wait<'_>,
    ) -> ::redis::RedisResult<Vec<String>> {
        use std::sync::atomic::Ordering;
        if wait.replicas == 0 || now_ms() < wait.off_until.load(Ordering::Relaxed) {
            return cmd.query_async::<Vec<String>>(conn).await;
        }
        let mut pipe = ::redis::pipe();
        pipe.add_command(cmd.clone())
            .cmd("WAIT")
            .arg(wait.replicas)
            .arg(WAIT_REPLICAS_TIMEOUT_MS);
        let (reply, acked): (Vec<String>, u64) = pipe.query_async(conn).await?;
        if acked < u64::from(wait.replicas) {
            let until = now_ms() + WAIT_BACKOFF_MS;
            if wait.off_until.swap(until, Ordering::Relaxed) < now_ms() {
                tracing::warn!(
                    acked,
                    wanted = wait.replicas,
                    "a batch of job writes reached fewer replicas than asked within \
                     {WAIT_REPLICAS_TIMEOUT_MS} ms; writing without waiting for \
                     {WAIT_BACKOFF_MS} ms"
                );
            }
        }
        Ok(reply)
    }

    fn answer(batch: Vec<BatchItem>, answer: ::redis::RedisResult<Vec<String>>, width: usize) {
        match answer {
            Ok(reply) if reply.len() == batch.len() * width => {
                for (item, answer) in batch.into_iter().zip(reply.chunks(width)) {
                    let _ = item.reply.send(Ok(answer.to_vec()));
                }
            }
            Ok(reply) => {
                let msg = format!(
                    "batch script answered {} values for {} items",
                    reply.len(),
                    batch.len()
                );
                for item in batch {
                    let _ = item.reply.send(Err(StoreError::Corrupt(msg.clone())));
                }
            }
            Err(e) => {
                let msg = e.to_string();
                for item in batch {
                    let _ = item.reply.send(Err(StoreError::Unavailable(msg.clone())));
                }
            }
        }
    }

    /// Queues one item and waits for its answer.
    async fn call(&self, args: Args) -> StoreResult<Vec<String>> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(BatchItem { args, reply })
            .map_err(|_| StoreError::Unavailable("the store is shutting down".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Unavailable("the batch call was dropped".into()))?
    }
}

/// What a batch waits for after its write: `replicas` replicas, unless a short `WAIT` turned
/// waiting off until `off_until` (ms).
#[derive(Clone, Copy)]
struct Wait<'a> {
    replicas: u8,
    off_until: &'a std::sync::atomic::AtomicI64,
}

/// The batchers of one script: one for every shard on one Redis, one per shard on a cluster.
struct Batchers(Vec<Batcher>);

impl Batchers {
    /// Queues one item of shard `shard` and waits for its answer.
    async fn call(&self, shard: usize, args: Args) -> StoreResult<Vec<String>> {
        let batcher = match self.0.as_slice() {
            [one] => Some(one),
            all => all.get(shard),
        }
        .ok_or_else(|| StoreError::Corrupt(format!("no batcher for shard {shard}")))?;
        batcher.call(args).await
    }
}

/// An index a listing walks: a sorted set of live jobs, or the paged index of finished ones
/// (the shard's, or a tenant's).
#[derive(Debug, Clone, Copy)]
enum Source<'a> {
    Live(IndexName<'a>),
    Done(Option<&'a str>),
}

fn unavailable(e: ::redis::RedisError) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// Where a listing continues: after the cursor, or from the top.
fn after_args(cursor: Option<&Cursor>) -> (String, String) {
    cursor.map_or((String::new(), String::new()), |c| {
        (c.score.to_string(), c.id.clone())
    })
}

impl RedisStore {
    /// Connects (failing fast when Redis is down) and keeps reconnecting on its own afterwards.
    /// `url` is `redis://…` (one Redis) or `redis+cluster://host:port,host:port,…` (a Redis
    /// Cluster, any reachable subset of its nodes).
    pub async fn connect(url: &str, prefix: &str, opts: StoreOptions) -> StoreResult<Self> {
        if prefix.contains(['{', '}']) {
            return Err(StoreError::Unavailable(format!(
                "key prefix `{prefix}` holds a brace: braces mark Redis Cluster hash tags"
            )));
        }
        // TCP_NODELAY: the redis crate leaves Nagle's algorithm on, which holds each small
        // script call back until the previous one is acknowledged — 40 ms of delayed-ACK
        // stall per round trip on Linux, the whole latency budget many times over.
        let tcp = ::redis::io::tcp::TcpSettings::default().set_nodelay(true);
        let conn = match cluster_nodes(url) {
            Some(nodes) => {
                let client = ::redis::cluster::ClusterClient::builder(nodes)
                    .tcp_settings(tcp)
                    .connection_timeout(Duration::from_secs(2))
                    .response_timeout(Duration::from_secs(5))
                    .retries(6)
                    .max_retry_wait(1_000)
                    .build()
                    .map_err(unavailable)?;
                Conn::Cluster(Arc::new(
                    ClusterConn::connect(client).await.map_err(unavailable)?,
                ))
            }
            None => {
                let info = ::redis::IntoConnectionInfo::into_connection_info(url)
                    .map_err(unavailable)?
                    .set_tcp_settings(tcp);
                let client = ::redis::Client::open(info).map_err(unavailable)?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(Duration::from_secs(2)))
                    .set_response_timeout(Some(Duration::from_secs(5)))
                    .set_number_of_retries(2)
                    .set_max_delay(Duration::from_secs(1));
                Conn::Single(
                    ConnectionManager::new_with_config(client, config)
                        .await
                        .map_err(unavailable)?,
                )
            }
        };
        let count = Self::shard_count(&mut conn.clone(), prefix, opts.shards).await?;
        let shards: Vec<String> = crate::shards::shard_tags(count)
            .into_iter()
            .map(|tag| format!("{prefix}{tag}:"))
            .collect();
        // One batcher per script on one Redis; one per shard and script on a cluster.
        let routes: Vec<Option<String>> = match conn {
            Conn::Cluster(_) => shards.iter().cloned().map(Some).collect(),
            Conn::Single(_) => vec![None],
        };
        let tables = lua_state_tables();
        let page = format!("local PAGE = {}\n", opts.index_page.max(1));
        let create_script =
            format!("{page}{LUA_GUARD}{LUA_INDEX_WRITES}{LUA_TENANT_OF}{LUA_PIECES}{LUA_CREATE}");
        let transition_script = format!(
            "{page}{tables}{LUA_GUARD}{LUA_INDEX_WRITES}{LUA_TENANT_OF}{LUA_PIECES}{LUA_RECORD}{LUA_TRANSITION}"
        );
        let creates = Batchers(
            routes
                .iter()
                .map(|route| {
                    Batcher::start(
                        conn.clone(),
                        Script::new(&create_script),
                        vec![
                            opts.job_ttl_ms.to_string(),
                            opts.idempotency_ttl_ms.to_string(),
                        ],
                        2,
                        route.clone(),
                        opts.wait_replicas,
                    )
                })
                .collect(),
        );
        let transitions = Batchers(
            routes
                .iter()
                .map(|route| {
                    Batcher::start(
                        conn.clone(),
                        Script::new(&transition_script),
                        vec![opts.job_ttl_ms.to_string()],
                        5,
                        route.clone(),
                        opts.wait_replicas,
                    )
                })
                .collect(),
        );
        let scripts = Scripts {
            annotate: Script::new(&format!(
                "{tables}{LUA_GUARD}{LUA_INDEX_WRITES}{LUA_PIECES}{LUA_RECORD}{LUA_ANNOTATE}"
            )),
            list: Script::new(&format!("{LUA_BYTE_LT}{LUA_TENANT_OF}{LUA_LIST}")),
            after: Script::new(&format!("{LUA_BYTE_LT}{LUA_AFTER}")),
            reserve: Script::new(LUA_RESERVE),
            config_put: Script::new(LUA_CONFIG_PUT),
            config_delete: Script::new(LUA_CONFIG_DELETE),
            lock_acquire: Script::new(LUA_LOCK_ACQUIRE),
            lock_release: Script::new(LUA_LOCK_RELEASE),
            workflow_put: Script::new(LUA_WORKFLOW_PUT),
            run_put: Script::new(&format!("{LUA_GUARD}{LUA_RUN_PUT}")),
            prune: Script::new(&format!("{LUA_GUARD}{LUA_PRUNE}")),
            prune_pages: Script::new(&format!("{LUA_GUARD}{LUA_PRUNE_PAGES}")),
        };
        Ok(RedisStore {
            conn,
            prefix: prefix.to_string(),
            shards,
            opts,
            scripts,
            creates,
            transitions,
        })
    }

    /// The store's shard count: the one it was first written with (`P layout`), or `wanted`
    /// for a store not written yet.
    async fn shard_count(conn: &mut Conn, prefix: &str, wanted: u16) -> StoreResult<u16> {
        let key = format!("{prefix}layout");
        let _: Option<String> = ::redis::cmd("SET")
            .arg(&key)
            .arg(format!("shards={}", wanted.max(1)))
            .arg("NX")
            .query_async(conn)
            .await
            .map_err(unavailable)?;
        let stored: Option<String> = conn.get(&key).await.map_err(unavailable)?;
        let count = stored
            .as_deref()
            .and_then(|s| s.strip_prefix("shards="))
            .and_then(|n| n.parse::<u16>().ok())
            .filter(|n| *n > 0)
            .ok_or_else(|| StoreError::Corrupt(format!("`{key}` holds {stored:?}")))?;
        if count != wanted {
            tracing::warn!(
                stored = count,
                configured = wanted,
                "the store was written with another shard count; keeping its own"
            );
        }
        Ok(count)
    }

    /// Whether this store talks to a Redis Cluster.
    fn clustered(&self) -> bool {
        matches!(self.conn, Conn::Cluster(_))
    }

    /// The shard of the record `id`.
    fn shard(&self, id: &str) -> usize {
        usize::from(crate::shards::shard_of(id, self.shard_count_u16()))
    }

    fn shard_count_u16(&self) -> u16 {
        u16::try_from(self.shards.len()).unwrap_or(1)
    }

    /// Shard `i`'s key prefix, `P{tag}:`.
    fn sp(&self, i: usize) -> &str {
        self.shards
            .get(i)
            .map_or(self.prefix.as_str(), String::as_str)
    }

    /// A key of the host's own (a lock, the secret, the layout).
    fn key(&self, rest: &str) -> String {
        format!("{}{rest}", self.prefix)
    }

    /// The key of one named thing of a `family`: the name between braces, which no name holds,
    /// so no name can make it equal another key (see the module docs).
    fn named(&self, family: &str, name: &str) -> String {
        format!("{}{family}:{{{name}}}", self.prefix)
    }

    /// A named thing of a family kept in shard `i`.
    fn in_shard(&self, i: usize, family: &str, name: &str) -> String {
        format!("{}{family}:{{{name}}}", self.sp(i))
    }

    /// The key of a job's record (its dead letter is `dlq`, a run's `run`): in its shard.
    fn record(&self, family: &str, id: &str) -> String {
        self.in_shard(self.shard(id), family, id)
    }

    /// A key of one of the families kept together under a tag of their own: `c` config, `w`
    /// workflows, `p` plugins (see the module docs).
    fn family_key(&self, tag: char, rest: &str) -> String {
        format!("{}{{{tag}}}:{rest}", self.prefix)
    }

    fn family_named(&self, tag: char, family: &str, name: &str) -> String {
        self.family_key(tag, &format!("{family}:{{{name}}}"))
    }

    fn run_index(&self, shard: usize, index: &RunIndex<'_>) -> String {
        match index {
            RunIndex::Workflow(w) => self.in_shard(shard, "runs:wf", w),
            RunIndex::Org(o) => self.in_shard(shard, "runs:org", o),
            RunIndex::Status(s) => format!("{}runs:status:{s}", self.sp(shard)),
            RunIndex::All => format!("{}runs:all", self.sp(shard)),
        }
    }

    fn index_key(&self, shard: usize, name: IndexName<'_>) -> String {
        match name {
            IndexName::Recent => format!("{}idx:recent", self.sp(shard)),
            IndexName::Tenant(t) => self.in_shard(shard, "idx:tenant", t),
            IndexName::Trace(t) => self.in_shard(shard, "idx:trace", t),
            IndexName::State(s) => format!("{}idx:state:{s}", self.sp(shard)),
        }
    }

    /// The indexes a listing walks in each shard: a live job is in the recent and tenant
    /// indexes, a finished one in the paged `done` indexes (the shard's, and its tenant's); a
    /// state filter walks only the half its state can be in, and a trace has one index for all.
    fn list_sources<'a>(filter: &'a JobFilter) -> Vec<Source<'a>> {
        let live = match list_index(filter) {
            IndexName::Trace(t) => return vec![Source::Live(IndexName::Trace(t))],
            IndexName::Tenant(t) => IndexName::Tenant(t),
            _ => IndexName::Recent,
        };
        let done = Source::Done(filter.tenant.as_deref());
        match filter.state {
            Some(s) if s.is_terminal() => vec![done],
            Some(_) => vec![Source::Live(live)],
            None => vec![Source::Live(live), done],
        }
    }

    /// The key of a listing's source in shard `i`.
    fn source_key(&self, i: usize, source: Source<'_>) -> String {
        match source {
            Source::Live(index) => self.index_key(i, index),
            Source::Done(Some(t)) => self.in_shard(i, "idx:done", t),
            Source::Done(None) => format!("{}idx:done", self.sp(i)),
        }
    }

    /// A job's arguments to the create script (its idempotency key left out when `key_reserved`:
    /// it was reserved in its own shard already).
    fn create_args(&self, new: &NewJob, key_reserved: bool) -> Args {
        let spec = &new.spec;
        let payload = match &spec.payload {
            Value::Null => Vec::new(),
            p => serde_json::to_vec(p).unwrap_or_default(),
        };
        let rest = spec_rest(spec);
        let idem = new
            .idempotency_key
            .as_deref()
            .filter(|_| !key_reserved)
            .unwrap_or("");
        // The key's shard only when there is a key (the script reads the prefix only then).
        let idem_prefix = if idem.is_empty() {
            ""
        } else {
            self.sp(self.shard(&idem_name(&spec.tenant_id, idem)))
        };
        let mut a = Args::with_capacity(16, payload.len() + rest.len() + 320);
        a.push(self.sp(self.shard(&spec.id)))
            .push(idem_prefix)
            .push(&spec.id)
            .push_num(spec.created_at)
            .push(payload)
            .push(rest)
            .push(&spec.tenant_id)
            .push(&spec.topic)
            .push(spec.team_id.as_deref().unwrap_or(""))
            .push(&spec.trace_id)
            .push(spec.deadline.map(|d| d.to_string()).unwrap_or_default())
            .push(format!(
                "0,{}{}",
                history_code(JobState::Pending),
                note_json(new.note.as_deref())
                    .map(|n| format!(",{n}"))
                    .unwrap_or_default()
            ))
            .push(idem)
            .push_num(spec.not_before.unwrap_or(spec.created_at))
            .push(spec.run_id.as_deref().unwrap_or(""))
            .push(
                spec.heartbeat_timeout_sec
                    .map(|t| t.saturating_mul(1000).to_string())
                    .unwrap_or_default(),
            );
        a
    }

    fn parse_create(reply: Vec<String>) -> StoreResult<CreateOutcome> {
        match reply.first().map(String::as_str) {
            Some("created") => Ok(CreateOutcome::Created),
            Some("exists") => Ok(CreateOutcome::Exists {
                job_id: reply.get(1).cloned().unwrap_or_default(),
            }),
            other => Err(StoreError::Corrupt(format!(
                "create script answered {other:?}"
            ))),
        }
    }

    /// Creates one job. Its idempotency key lives in the shard of `tenant~key`, which is seldom
    /// the job's own: on one Redis the create script checks and sets it all the same (a script
    /// there may touch any key), but on a cluster the two shards may be on two nodes, so the
    /// key is first reserved for the job ([`LUA_RESERVE`]) and the job created after. A key
    /// that names a job not there (yet) is another create between its two steps — or one that
    /// died there: the job is awaited for a while, then the key is taken over.
    async fn create_one(&self, new: &NewJob) -> StoreResult<CreateOutcome> {
        let spec = &new.spec;
        let shard = self.shard(&spec.id);
        let Some(idem) = new.idempotency_key.as_deref().filter(|_| self.clustered()) else {
            return Self::parse_create(
                self.creates
                    .call(shard, self.create_args(new, false))
                    .await?,
            );
        };
        let ik_name = idem_name(&spec.tenant_id, idem);
        let ik_shard = self.shard(&ik_name);
        if ik_shard == shard {
            return Self::parse_create(
                self.creates
                    .call(shard, self.create_args(new, false))
                    .await?,
            );
        }
        let ik = self.in_shard(ik_shard, "idem", &ik_name);
        let mut takeover = String::new();
        let mut waited = Duration::ZERO;
        loop {
            let holder = self.reserve_key(&ik, &spec.id, &takeover).await?;
            if holder == spec.id {
                return Self::parse_create(
                    self.creates
                        .call(shard, self.create_args(new, true))
                        .await?,
                );
            }
            let mut conn = self.conn.clone();
            let there: bool = conn
                .exists(self.record("job", &holder))
                .await
                .map_err(unavailable)?;
            if there {
                return Ok(CreateOutcome::Exists { job_id: holder });
            }
            if waited >= RESERVATION_WAIT {
                takeover = holder;
                continue;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            waited += Duration::from_millis(20);
        }
    }

    /// Reserves the idempotency key `ik` for the job `id` (taking it over from `takeover` when
    /// it holds that), answering the id the key holds after the call.
    async fn reserve_key(&self, ik: &str, id: &str, takeover: &str) -> StoreResult<String> {
        let mut conn = self.conn.clone();
        self.scripts
            .reserve
            .key(ik)
            .arg(id)
            .arg(self.opts.idempotency_ttl_ms)
            .arg(takeover)
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)
    }

    /// Up to `want` `(id, score)` entries of one index after the cursor, in list order (score
    /// descending, ties by id descending), however long the tie at the cursor.
    async fn index_after(
        &self,
        index: &str,
        cursor: Option<&Cursor>,
        want: usize,
    ) -> StoreResult<Vec<(String, i64)>> {
        let (after_score, after_id) = after_args(cursor);
        let mut conn = self.conn.clone();
        let flat: Vec<String> = self
            .scripts
            .after
            .key(index)
            .arg(after_score)
            .arg(after_id)
            .arg(want)
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        pairs(&flat, index)
    }

    /// Up to `want` entries after the cursor of an index every shard keeps (`index(shard)` its
    /// key), merged in list order — `(id, score, shard)` — and where the walk goes on (`None`
    /// when every shard is done).
    async fn merged_after(
        &self,
        index: &(dyn Fn(usize) -> String + Sync),
        cursor: Option<&Cursor>,
        want: usize,
    ) -> StoreResult<(Vec<(String, i64, usize)>, Option<Cursor>)> {
        let calls = (0..self.shards.len()).map(|i| async move {
            self.index_after(&index(i), cursor, want)
                .await
                .map(|entries| (i, entries))
        });
        let mut pages = Vec::with_capacity(self.shards.len());
        for answer in futures::future::join_all(calls).await {
            let (i, entries) = answer?;
            let full = entries.len() >= want;
            let items: Vec<(Cursor, (String, i64, usize))> = entries
                .into_iter()
                .map(|(id, score)| {
                    (
                        Cursor {
                            score,
                            id: id.clone(),
                        },
                        (id, score, i),
                    )
                })
                .collect();
            let stopped_at = full.then(|| items.last().map(|(c, _)| c.clone())).flatten();
            pages.push(crate::shards::ShardPage { items, stopped_at });
        }
        Ok(crate::shards::merge(pages, want))
    }

    /// Up to `limit` ids of an index every shard keeps, lowest scores first up to `max`
    /// (inclusive): what is due.
    async fn merged_due(&self, index: &str, max: Millis, limit: usize) -> StoreResult<Vec<String>> {
        let calls = (0..self.shards.len()).map(|i| async move {
            let mut conn = self.conn.clone();
            let flat: Vec<String> = ::redis::cmd("ZRANGE")
                .arg(format!("{}{index}", self.sp(i)))
                .arg("-inf")
                .arg(max)
                .arg("BYSCORE")
                .arg("LIMIT")
                .arg(0)
                .arg(limit)
                .arg("WITHSCORES")
                .query_async(&mut conn)
                .await
                .map_err(unavailable)?;
            pairs(&flat, index)
        });
        let mut all = Vec::new();
        for answer in futures::future::join_all(calls).await {
            all.extend(answer?);
        }
        all.sort_by(|(a, sa), (b, sb)| (sa, a).cmp(&(sb, b)));
        all.truncate(limit);
        Ok(all.into_iter().map(|(id, _)| id).collect())
    }

    /// Drops the entries scored before `before` of the indexes `keys` whose record (`record`
    /// .. id) has expired, a budget of entries per script call. Answers how many went and which
    /// of the first `named` keys (those listed in a names set) are left empty. A key `paged`
    /// says is a paged index is walked page by page.
    async fn prune(
        &self,
        keys: &[String],
        named: usize,
        record: &str,
        before: Millis,
        paged: &(dyn Fn(&str) -> bool + Sync),
    ) -> StoreResult<(u64, Vec<String>)> {
        let mut conn = self.conn.clone();
        let (mut removed, mut empty) = (0, Vec::new());
        for (i, k) in keys.iter().enumerate() {
            let script = if paged(k) {
                &self.scripts.prune_pages
            } else {
                &self.scripts.prune
            };
            let mut offset = 0i64;
            loop {
                let (gone, left, next): (u64, u64, i64) = script
                    .key(k)
                    .arg(record)
                    .arg(before)
                    .arg(offset)
                    .arg(PRUNE_BUDGET)
                    .invoke_async(&mut conn)
                    .await
                    .map_err(unavailable)?;
                removed += gone;
                if next < 0 {
                    if left == 0 && i < named {
                        empty.push(k.clone());
                    }
                    break;
                }
                offset = next;
            }
        }
        Ok((removed, empty))
    }

    /// One pipeline per shard of the ids' records (a pipeline to a cluster must stay in one
    /// slot), `command(id)` each, run side by side; the replies back in the order of `ids`.
    async fn per_record<T: ::redis::FromRedisValue + Send>(
        &self,
        ids: &[String],
        command: &(dyn Fn(&str) -> ::redis::Cmd + Sync),
    ) -> StoreResult<Vec<T>> {
        let shards = ids.iter().map(|id| self.shard(id)).collect();
        self.per_key(ids, shards, command).await
    }

    /// Reads jobs with one pipeline per shard: each job's hash holds its history.
    async fn load_jobs(&self, ids: &[String]) -> StoreResult<Vec<Option<Job>>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let raw: Vec<std::collections::HashMap<String, Vec<u8>>> = self
            .per_record(ids, &|id| {
                let mut c = ::redis::cmd("HGETALL");
                c.arg(self.record("job", id));
                c
            })
            .await?;
        let replies = raw
            .into_iter()
            .zip(ids)
            .map(|(h, id)| joined(id, h))
            .collect::<StoreResult<Vec<_>>>()?;
        // The effective configs the records reference, in their shards: one more round trip,
        // only when some do.
        let mut refs: Vec<(usize, &String)> = ids
            .iter()
            .zip(&replies)
            .filter_map(|(id, h)| h.get("ecr").map(|r| (self.shard(id), r)))
            .collect();
        refs.sort();
        refs.dedup();
        let mut configs = std::collections::HashMap::new();
        if !refs.is_empty() {
            let keys: Vec<String> = refs
                .iter()
                .map(|(shard, r)| self.in_shard(*shard, "cfg", r))
                .collect();
            let docs: Vec<Option<String>> = self
                .per_key(&keys, refs.iter().map(|(s, _)| *s).collect(), &|k| {
                    let mut c = ::redis::cmd("GET");
                    c.arg(k);
                    c
                })
                .await?;
            for ((_, r), doc) in refs.into_iter().zip(docs) {
                if let Some(doc) = doc {
                    configs.insert(r.clone(), doc);
                }
            }
        }
        let mut out = Vec::with_capacity(ids.len());
        for (id, hash) in ids.iter().zip(replies) {
            out.push(job_from_hash(id, hash, &configs)?);
        }
        Ok(out)
    }

    /// One pipeline per shard of `command(key)` for each key, `shards[i]` the shard of `keys[i]`,
    /// run side by side; the replies back in the order of `keys`.
    async fn per_key<T: ::redis::FromRedisValue + Send>(
        &self,
        keys: &[String],
        shards: Vec<usize>,
        command: &(dyn Fn(&str) -> ::redis::Cmd + Sync),
    ) -> StoreResult<Vec<T>> {
        let mut groups: std::collections::BTreeMap<usize, Vec<usize>> =
            std::collections::BTreeMap::new();
        for (pos, shard) in shards.into_iter().enumerate() {
            groups.entry(shard).or_default().push(pos);
        }
        let calls = groups.into_values().map(|positions| async move {
            let mut pipe = ::redis::pipe();
            for &pos in &positions {
                if let Some(k) = keys.get(pos) {
                    pipe.add_command(command(k));
                }
            }
            let mut conn = self.conn.clone();
            let replies: Vec<T> = pipe.query_async(&mut conn).await.map_err(unavailable)?;
            Ok::<_, StoreError>(positions.into_iter().zip(replies).collect::<Vec<_>>())
        });
        let mut slots: Vec<Option<T>> = (0..keys.len()).map(|_| None).collect();
        for answer in futures::future::join_all(calls).await {
            for (pos, reply) in answer? {
                if let Some(slot) = slots.get_mut(pos) {
                    *slot = Some(reply);
                }
            }
        }
        slots
            .into_iter()
            .map(|r| r.ok_or_else(|| StoreError::Corrupt("a pipeline answered short".into())))
            .collect()
    }
}

/// How long a create waits for the job an idempotency key names (reserved by another create
/// that has not written it yet) before it takes the key over: far longer than the two steps of
/// a create take, short enough that a create that died between them holds its key up briefly.
const RESERVATION_WAIT: Duration = Duration::from_secs(2);

/// What an idempotency key is stored under, and hashed by for its shard: `tenant~key` (the
/// create script builds the same name).
fn idem_name(tenant: &str, key: &str) -> String {
    format!("{tenant}~{key}")
}

/// `(member, score)` pairs of a flat `member, score, …` reply.
fn pairs(flat: &[String], index: &str) -> StoreResult<Vec<(String, i64)>> {
    flat.chunks(2)
        .map(|pair| match pair {
            [id, score] => score_of(score)
                .map(|s| (id.clone(), s))
                .ok_or_else(|| StoreError::Corrupt(format!("score `{score}` in {index}"))),
            _ => Err(StoreError::Corrupt(format!("odd reply from {index}"))),
        })
        .collect()
}

/// A record's fields with the pieces of its long values joined (see [`LUA_PIECES`]) and every
/// value decoded.
fn joined(
    id: &str,
    mut raw: std::collections::HashMap<String, Vec<u8>>,
) -> StoreResult<std::collections::HashMap<String, String>> {
    let names: Vec<String> = raw.keys().filter(|k| !k.contains('#')).cloned().collect();
    let mut out = std::collections::HashMap::with_capacity(names.len());
    for name in names {
        let Some(value) = raw.remove(&name) else {
            continue;
        };
        let value = match pieced(&value) {
            Some((n, first)) => {
                let mut whole = first.to_vec();
                let mut complete = true;
                for i in 2..=n {
                    match raw.get(&format!("{name}#{i}")) {
                        Some(piece) => whole.extend_from_slice(piece),
                        None => {
                            complete = false;
                            break;
                        }
                    }
                }
                if complete { whole } else { value }
            }
            None => value,
        };
        let value = String::from_utf8(value)
            .map_err(|_| StoreError::Corrupt(format!("job {id}: field `{name}` is not UTF-8")))?;
        out.insert(name, value);
    }
    Ok(out)
}

/// The piece count and first piece of a value stored in pieces (`~{n}~{first piece}`).
fn pieced(value: &[u8]) -> Option<(usize, &[u8])> {
    let rest = value.strip_prefix(b"~")?;
    let end = rest.iter().position(|b| *b == b'~')?;
    let n = std::str::from_utf8(rest.get(..end)?).ok()?.parse().ok()?;
    Some((n, rest.get(end + 1..)?))
}

/// An event's note as the compact history holds it: a JSON string (which holds no raw newline,
/// the events' separator, and may hold commas: it is the event's last part).
fn note_json(note: Option<&str>) -> Option<String> {
    note.map(|n| serde_json::to_string(n).unwrap_or_default())
}

/// The longest effective config (JSON) a record holds inline; a longer one is stored once per
/// distinct document, under its digest (see [`LUA_RECORD`]). At this size or under, the
/// reference (43 bytes) would save nothing; above it, one config shared by many jobs costs each
/// of them 43 bytes, and keeps the hash's every value within Redis's compact (listpack)
/// encoding, which holds values of up to 64 bytes.
const INLINE_CONFIG_MAX: usize = 48;

/// The hash fields a transition or annotation sets. A record written before the lean layout
/// has the long names of these (`result`, `error`, `safety_decision`, `safety_reason`,
/// `execution_ms`, `effective_config`): the reader takes a short one first, then the long one.
fn update_fields(u: &JobUpdate) -> Vec<(&'static str, String)> {
    let mut f = Vec::new();
    if let Some(v) = &u.worker_id {
        f.push(("w", v.clone()));
    }
    if let Some(v) = &u.worker_instance {
        f.push(("worker_instance", v.clone()));
    }
    if let Some(v) = &u.lease {
        f.push(("lease", v.clone()));
    }
    if let Some(v) = &u.result {
        f.push(("r", v.to_string()));
    }
    if let Some(v) = &u.error {
        f.push(("err", serde_json::to_string(v).unwrap_or_default()));
    }
    if let Some(v) = &u.safety_decision {
        f.push(("sd", v.clone()));
    }
    if let Some(v) = &u.safety_reason {
        f.push(("sr", v.clone()));
    }
    if let Some(v) = u.execution_ms {
        f.push(("ms", v.to_string()));
    }
    if let Some(v) = &u.effective_config {
        let json = v.to_string();
        if json.len() <= INLINE_CONFIG_MAX {
            f.push(("ec", json));
        } else {
            f.push(("@cfg", format!("{} {json}", config_ref(&json))));
        }
    }
    f
}

/// The content address of an effective config: SHA-256 of its JSON, base64url (43 bytes).
fn config_ref(json: &str) -> String {
    use base64::Engine as _;
    use sha2::Digest as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(json.as_bytes()))
}

/// The spec's fields the record does not hold elsewhere, as a JSON object ('' when none): its
/// id, tenant, topic, trace, team, run, deadline, creation time and payload have fields of their
/// own (or follow from the id), and a default priority or a first attempt is left out.
fn spec_rest(spec: &JobSpec) -> String {
    let Ok(Value::Object(mut m)) = serde_json::to_value(spec) else {
        return String::new();
    };
    for k in [
        "id",
        "tenant_id",
        "topic",
        "trace_id",
        "team_id",
        "run_id",
        "deadline",
        "created_at",
        "payload",
    ] {
        m.remove(k);
    }
    if m.get("priority") == Some(&Value::from(Priority::default().as_str())) {
        m.remove("priority");
    }
    if m.get("attempt") == Some(&Value::from(1)) {
        m.remove("attempt");
    }
    if m.is_empty() {
        String::new()
    } else {
        Value::Object(m).to_string()
    }
}

/// The spec of a lean record: [`spec_rest`] with the fields it left out put back.
fn spec_of(
    id: &str,
    h: &mut std::collections::HashMap<String, String>,
    created: Millis,
) -> StoreResult<JobSpec> {
    let corrupt = |what: &str, e: &dyn std::fmt::Display| {
        StoreError::Corrupt(format!("job {id}: {what}: {e}"))
    };
    let mut m = match h.remove("x") {
        Some(x) => match serde_json::from_str::<Value>(&x).map_err(|e| corrupt("spec", &e))? {
            Value::Object(m) => m,
            other => return Err(corrupt("spec", &format!("not an object: {other}"))),
        },
        None => serde_json::Map::new(),
    };
    let tenant = h
        .remove("tenant")
        .unwrap_or_else(|| crate::ids::tenant_of(id).unwrap_or_default().to_string());
    m.insert("id".into(), id.into());
    m.insert("tenant_id".into(), tenant.into());
    m.insert("topic".into(), h.remove("topic").unwrap_or_default().into());
    m.insert(
        "trace_id".into(),
        h.remove("trace").unwrap_or_else(|| id.to_string()).into(),
    );
    m.insert("created_at".into(), created.into());
    if let Some(team) = h.remove("team").filter(|t| !t.is_empty()) {
        m.insert("team_id".into(), team.into());
    }
    if let Some(run) = h.remove("run") {
        m.insert("run_id".into(), run.into());
    }
    if let Some(d) = h.get("deadline").and_then(|d| d.parse::<Millis>().ok()) {
        m.insert("deadline".into(), d.into());
    }
    if let Some(p) = h.remove("p") {
        let payload: Value = serde_json::from_str(&p).map_err(|e| corrupt("payload", &e))?;
        m.insert("payload".into(), payload);
    }
    serde_json::from_value(Value::Object(m)).map_err(|e| corrupt("spec", &e))
}

/// The compact history (`h`): one event a line, `{ms after created},{state code}[,{note}]`.
fn compact_history(id: &str, h: &str, created: Millis) -> StoreResult<Vec<JobEvent>> {
    let corrupt = |line: &str| StoreError::Corrupt(format!("job {id}: history event `{line}`"));
    h.split('\n')
        .filter(|l| !l.is_empty())
        .map(|line| {
            let mut parts = line.splitn(3, ',');
            let offset: Millis = parts
                .next()
                .and_then(|o| o.parse().ok())
                .ok_or_else(|| corrupt(line))?;
            let state = parts
                .next()
                .and_then(|c| c.parse::<usize>().ok())
                .and_then(|c| JobState::ALL.get(c).copied())
                .ok_or_else(|| corrupt(line))?;
            let note = parts
                .next()
                .map(serde_json::from_str::<String>)
                .transpose()
                .map_err(|_| corrupt(line))?;
            Ok(JobEvent {
                at: created + offset,
                state,
                note,
            })
        })
        .collect()
}

/// A job from its hash: the lean record, or one an earlier version wrote (its whole spec as
/// JSON in `spec`, its history as JSON events `h:1` … `h:{hn}`, long field names), or one of
/// those moved on by this version (new events in `h` after the old ones, new fields under the
/// short names). `configs` holds the effective configs the records reference, by reference.
fn job_from_hash(
    id: &str,
    mut h: std::collections::HashMap<String, String>,
    configs: &std::collections::HashMap<String, String>,
) -> StoreResult<Option<Job>> {
    let corrupt =
        |what: &str, e: &dyn std::fmt::Display| StoreError::Corrupt(format!("{what}: {e}"));
    let Some(state) = h.get("state") else {
        return Ok(None);
    };
    let state: JobState = state.parse().map_err(|e: String| corrupt("state", &e))?;
    let created: Option<Millis> = h
        .get("c")
        .or_else(|| h.get("created"))
        .and_then(|c| c.parse().ok());
    let spec: JobSpec = match h.remove("spec") {
        Some(spec) => serde_json::from_str(&spec).map_err(|e| corrupt("spec", &e))?,
        None => spec_of(
            id,
            &mut h,
            created.ok_or_else(|| StoreError::Corrupt(format!("job {id}: no creation time")))?,
        )?,
    };
    let json = |v: Option<String>| v.and_then(|s| serde_json::from_str::<Value>(&s).ok());
    let config_ref = h.remove("ecr");
    let mut take = |short: &str, long: &str| h.remove(short).or_else(|| h.remove(long));
    let result = json(take("r", "result"));
    let error = take("err", "error").and_then(|s| serde_json::from_str(&s).ok());
    let safety_decision = take("sd", "safety_decision");
    let safety_reason = take("sr", "safety_reason");
    let execution_ms = take("ms", "execution_ms").and_then(|v| v.parse().ok());
    let effective_config = match config_ref {
        Some(r) => configs.get(&r).and_then(|c| serde_json::from_str(c).ok()),
        None => json(take("ec", "effective_config")),
    };
    let events: usize = h.get("hn").and_then(|n| n.parse().ok()).unwrap_or(0);
    let mut history = (1..=events)
        .map(|n| {
            let event = h
                .remove(&format!("h:{n}"))
                .ok_or_else(|| StoreError::Corrupt(format!("history entry {n} missing")))?;
            serde_json::from_str(&event).map_err(|err| corrupt("event", &err))
        })
        .collect::<StoreResult<Vec<JobEvent>>>()?;
    if let Some(compact) = h.remove("h") {
        history.extend(compact_history(
            id,
            &compact,
            created.unwrap_or(spec.created_at),
        )?);
    }
    Ok(Some(Job {
        state,
        worker_id: h.remove("w").or_else(|| h.remove("worker_id")),
        worker_instance: h.remove("worker_instance"),
        lease: h.remove("lease"),
        safety_decision,
        safety_reason,
        reason: h.remove("reason").filter(|r| !r.is_empty()),
        result,
        error,
        execution_ms,
        effective_config,
        updated_at: h
            .get("u")
            .or_else(|| h.get("updated_at"))
            .and_then(|v| v.parse().ok())
            .unwrap_or(spec.created_at),
        history,
        spec,
    }))
}

/// A ZSET score as Redis prints it, back to integer milliseconds.
fn score_of(s: &str) -> Option<i64> {
    s.parse::<i64>()
        .ok()
        .or_else(|| s.parse::<f64>().ok().map(|f| f as i64))
}

#[async_trait]
impl Backend for RedisStore {
    fn backend(&self) -> &'static str {
        if self.clustered() {
            "redis-cluster"
        } else {
            "redis"
        }
    }

    async fn ping(&self) -> StoreResult<()> {
        let mut conn = self.conn.clone();
        // On a cluster: the node of shard 0's slot (a keyless PING would go to every node).
        ::redis::cmd("EXISTS")
            .arg(self.key("layout"))
            .query_async::<i64>(&mut conn)
            .await
            .map(drop)
            .map_err(unavailable)
    }
}

#[async_trait]
impl JobStore for RedisStore {
    async fn create_job(&self, job: &NewJob) -> StoreResult<CreateOutcome> {
        self.create_one(job).await
    }

    async fn create_jobs(&self, jobs: &[NewJob]) -> StoreResult<Vec<StoreResult<CreateOutcome>>> {
        // Queued together, the creates share a few batched script calls.
        let calls = jobs.iter().map(|j| self.create_one(j));
        Ok(futures::future::join_all(calls).await)
    }

    async fn get_job(&self, id: &str) -> StoreResult<Option<Job>> {
        Ok(self
            .load_jobs(std::slice::from_ref(&id.to_string()))
            .await?
            .pop()
            .flatten())
    }

    async fn get_jobs(&self, ids: &[String]) -> StoreResult<Vec<Option<Job>>> {
        self.load_jobs(ids).await
    }

    async fn transition(&self, id: &str, t: &Transition) -> StoreResult<TransitionOutcome> {
        let fields = update_fields(&t.update);
        let shard = self.shard(id);
        let mut args = Args::with_capacity(11 + 2 * t.via.len() + 2 * fields.len(), 256);
        args.push(self.sp(shard))
            .push(id)
            .push(t.to.as_str())
            .push_num(t.at)
            .push(note_json(t.note.as_deref()).unwrap_or_default());
        match &t.dead_letter {
            Some(dl) => args
                .push(serde_json::to_vec(dl).unwrap_or_default())
                .push_num(dl.created_at),
            None => args.push("").push("0"),
        };
        match &t.claim {
            Some(c) => args.push(&c.worker_id).push(&c.lease),
            None => args.push("").push(""),
        };
        args.push_num(t.via.len() as i64);
        for (state, at) in &t.via {
            args.push(state.as_str()).push_num(*at);
        }
        args.push_num(fields.len() as i64);
        for (k, v) in fields {
            args.push(k).push(v);
        }
        let reply = self.transitions.call(shard, args).await?;
        let [verdict, state, run_id, tenant_id, created_at] = reply.as_slice() else {
            return Err(StoreError::Corrupt(format!(
                "transition script answered {reply:?}"
            )));
        };
        let from = || -> StoreResult<JobState> { state.parse().map_err(StoreError::Corrupt) };
        let run_id = || Some(run_id.clone()).filter(|r| !r.is_empty());
        match verdict.as_str() {
            "ok" => Ok(TransitionOutcome::Applied {
                from: from()?,
                run_id: run_id(),
                tenant_id: tenant_id.clone(),
                created_at: created_at.parse().map_err(|_| {
                    StoreError::Corrupt(format!("job {id} has no creation time: {created_at:?}"))
                })?,
            }),
            "same" => Ok(TransitionOutcome::Unchanged),
            "other" => Ok(TransitionOutcome::OtherWorker),
            "illegal" => Err(StoreError::IllegalTransition {
                from: from()?,
                to: t.to,
            }),
            "missing" => Err(StoreError::NotFound(id.to_string())),
            other => Err(StoreError::Corrupt(format!(
                "transition script answered {other:?}"
            ))),
        }
    }

    async fn annotate(&self, id: &str, a: &Annotation) -> StoreResult<bool> {
        let sp = self.sp(self.shard(id));
        let mut inv = self.scripts.annotate.prepare_invoke();
        // The shard's prefix as the call's key routes it to the shard's node on a cluster.
        inv.key(sp)
            .arg(sp)
            .arg(self.opts.job_ttl_ms)
            .arg(id)
            .arg(a.expect.as_str())
            .arg(a.reason.as_deref().unwrap_or(""))
            .arg(note_json(a.reason.as_deref()).unwrap_or_default())
            .arg(a.recheck_at.map(|r| r.to_string()).unwrap_or_default())
            .arg(a.at);
        for (k, v) in update_fields(&a.update) {
            inv.arg(k).arg(v);
        }
        let mut conn = self.conn.clone();
        let reply: String = inv.invoke_async(&mut conn).await.map_err(unavailable)?;
        match reply.as_str() {
            "ok" => Ok(true),
            "skip" => Ok(false),
            _ => Err(StoreError::NotFound(id.to_string())),
        }
    }

    async fn count_jobs(&self, states: &[JobState]) -> StoreResult<Vec<u64>> {
        // A finished job is in no state index (one of a store written before the paged indexes
        // is, and is not counted either): only the live states are asked for.
        let live: Vec<usize> = (0..states.len())
            .filter(|&k| states.get(k).is_some_and(|s| !s.is_terminal()))
            .collect();
        let mut totals = vec![0u64; states.len()];
        if live.is_empty() {
            return Ok(totals);
        }
        let calls = (0..self.shards.len()).map(|i| {
            let mut pipe = ::redis::pipe();
            for s in live.iter().filter_map(|&k| states.get(k)) {
                pipe.zcard(self.index_key(i, IndexName::State(*s)));
            }
            async move {
                let mut conn = self.conn.clone();
                pipe.query_async::<Vec<u64>>(&mut conn)
                    .await
                    .map_err(unavailable)
            }
        });
        for counts in futures::future::join_all(calls).await {
            for (&k, n) in live.iter().zip(counts?) {
                if let Some(total) = totals.get_mut(k) {
                    *total += n;
                }
            }
        }
        Ok(totals)
    }

    async fn list_jobs(&self, filter: &JobFilter, page: &PageRequest) -> StoreResult<Page<Job>> {
        let opt = |v: &Option<String>| v.clone().unwrap_or_default();
        let (after_score, after_id) = after_args(page.cursor.as_ref());
        let sources = Self::list_sources(filter);
        // A trace's own job is met from its record, in its own shard only.
        let root = filter.trace_id.as_deref().map(|t| (self.shard(t), t));
        // The page's scan budget shared among the shards' indexes (each looks at least a
        // page's worth), so a selective filter answers a short page with a cursor as soon on
        // many shards as on one, instead of scanning the shard count's multiple of entries.
        let walks = self.shards.len().max(1) * sources.len();
        let budget = (scan_budget(page.limit) / walks).max(page.limit);
        let calls = (0..self.shards.len())
            .flat_map(|i| sources.iter().map(move |source| (i, *source)))
            .map(|(i, source)| {
                let sp = self.sp(i);
                let mut inv = self.scripts.list.prepare_invoke();
                inv.key(sp)
                    .arg(sp)
                    .arg(self.source_key(i, source))
                    .arg(&after_score)
                    .arg(&after_id)
                    .arg(page.limit)
                    .arg(budget)
                    .arg(filter.state.map(|s| s.as_str()).unwrap_or(""))
                    .arg(opt(&filter.topic))
                    .arg(opt(&filter.tenant))
                    .arg(opt(&filter.team))
                    .arg(
                        filter
                            .updated_after
                            .map(|v| v.to_string())
                            .unwrap_or_default(),
                    )
                    .arg(
                        filter
                            .updated_before
                            .map(|v| v.to_string())
                            .unwrap_or_default(),
                    )
                    .arg(match root {
                        Some((shard, t)) if shard == i => t,
                        _ => "",
                    })
                    .arg(if matches!(source, Source::Done(_)) {
                        "1"
                    } else {
                        ""
                    });
                async move {
                    let mut conn = self.conn.clone();
                    inv.invoke_async::<(Vec<String>, String, String, i64)>(&mut conn)
                        .await
                        .map_err(unavailable)
                }
            });
        let mut pages = Vec::with_capacity(walks);
        for answer in futures::future::join_all(calls).await {
            let (flat, last_score, last_id, more) = answer?;
            let items = pairs(&flat, "a job list")?
                .into_iter()
                .map(|(id, score)| {
                    (
                        Cursor {
                            score,
                            id: id.clone(),
                        },
                        id,
                    )
                })
                .collect();
            let stopped_at = (more == 1)
                .then(|| score_of(&last_score).map(|score| Cursor { score, id: last_id }))
                .flatten();
            pages.push(crate::shards::ShardPage { items, stopped_at });
        }
        let (ids, next) = crate::shards::merge(pages, page.limit);
        let items = self.load_jobs(&ids).await?.into_iter().flatten().collect();
        Ok(Page {
            items,
            next_cursor: next.map(|c| c.encode()),
        })
    }

    async fn jobs_due(
        &self,
        state: JobState,
        before: Millis,
        limit: usize,
    ) -> StoreResult<Vec<String>> {
        if state.is_terminal() {
            return Ok(Vec::new());
        }
        self.merged_due(&format!("idx:state:{state}"), before, limit)
            .await
    }

    async fn holdings(
        &self,
        state: JobState,
        after: Option<&Cursor>,
        limit: usize,
    ) -> StoreResult<(Vec<Holding>, Option<Cursor>)> {
        if state.is_terminal() {
            return Ok((Vec::new(), None));
        }
        let (entries, next) = self
            .merged_after(
                &|i| self.index_key(i, IndexName::State(state)),
                after,
                limit,
            )
            .await?;
        if entries.is_empty() {
            return Ok((Vec::new(), next));
        }
        let ids: Vec<String> = entries.iter().map(|(id, _, _)| id.clone()).collect();
        type Fields = (
            Option<String>,
            Option<String>,
            Option<String>,
            Option<u64>,
            Option<String>,
        );
        let workers: Vec<Fields> = self
            .per_record(&ids, &|id| {
                let mut c = ::redis::cmd("HMGET");
                c.arg(self.record("job", id))
                    .arg("w")
                    .arg("worker_instance")
                    .arg("lease")
                    .arg("hbt")
                    .arg("worker_id");
                c
            })
            .await?;
        let held = entries
            .into_iter()
            .zip(workers)
            .map(
                |((job_id, since, _), (worker_id, worker_instance, lease, hbt, long_id))| Holding {
                    job_id,
                    worker_id: worker_id.or(long_id),
                    worker_instance,
                    lease,
                    heartbeat_timeout_ms: hbt,
                    since,
                },
            )
            .collect();
        Ok((held, next))
    }

    async fn deadlines_due(&self, now: Millis, limit: usize) -> StoreResult<Vec<String>> {
        self.merged_due("idx:deadline", now, limit).await
    }

    async fn prune_indexes(&self, before: Millis) -> StoreResult<u64> {
        let mut removed = 0;
        for i in 0..self.shards.len() {
            let mut conn = self.conn.clone();
            let names_key = format!("{}idx:names", self.sp(i));
            let named: Vec<String> = conn.smembers(&names_key).await.map_err(unavailable)?;
            let mut keys = named.clone();
            keys.push(self.index_key(i, IndexName::Recent));
            keys.push(self.source_key(i, Source::Done(None)));
            // (A store written before the finished jobs' paged indexes has them in the
            // terminal states' indexes, pruned here as they expire.)
            keys.extend(
                JobState::ALL
                    .iter()
                    .map(|s| self.index_key(i, IndexName::State(*s))),
            );
            let record = format!("{}job:{{", self.sp(i));
            let sp = self.sp(i);
            let paged = |k: &str| {
                k.strip_prefix(sp)
                    .is_some_and(|k| k.starts_with("idx:done"))
            };
            let (gone, empty) = self
                .prune(&keys, named.len(), &record, before, &paged)
                .await?;
            removed += gone;
            if !empty.is_empty() {
                let _: () = conn.srem(&names_key, empty).await.map_err(unavailable)?;
            }
        }
        Ok(removed)
    }
}

#[async_trait]
impl DeadLetters for RedisStore {
    async fn dlq_get(&self, job_id: &str) -> StoreResult<Option<DlqEntry>> {
        let mut conn = self.conn.clone();
        let raw: Option<String> = conn
            .get(self.record("dlq", job_id))
            .await
            .map_err(unavailable)?;
        raw.map(|r| serde_json::from_str(&r).map_err(|e| StoreError::Corrupt(e.to_string())))
            .transpose()
    }

    async fn dlq_list(
        &self,
        filter: &DlqFilter,
        page: &PageRequest,
    ) -> StoreResult<Page<DlqEntry>> {
        // Dead letters are read by people, not by the hot path: walk the shards' indexes merged,
        // in chunks from the cursor (a script finds each shard's entries after it, however long
        // the tie it sits in), and filter here, with the same tie order and budget as the job
        // lists. A tenant's entries come from its own indexes: a cursor holds the last entry
        // looked at, which must never be another tenant's.
        let index = |i: usize| match &filter.tenant {
            Some(t) => self.in_shard(i, "idx:dlq", t),
            None => format!("{}idx:dlq", self.sp(i)),
        };
        let budget = scan_budget(page.limit);
        let mut cursor = page.cursor.clone();
        let mut items = Vec::new();
        let mut scanned = 0;
        let mut chunk_len = page.limit.clamp(1, 256);
        loop {
            let want = chunk_len.min(budget - scanned).max(1);
            let (fresh, next) = self.merged_after(&index, cursor.as_ref(), want).await?;
            if fresh.is_empty() {
                return Ok(Page {
                    items,
                    next_cursor: next.map(|c| c.encode()),
                });
            }
            let ids: Vec<String> = fresh.iter().map(|(id, _, _)| id.clone()).collect();
            let raws: Vec<Option<String>> = self
                .per_record(&ids, &|id| {
                    let mut c = ::redis::cmd("GET");
                    c.arg(self.record("dlq", id));
                    c
                })
                .await?;
            let mut full = false;
            for ((id, score, _), raw) in fresh.into_iter().zip(raws) {
                scanned += 1;
                cursor = Some(Cursor { score, id });
                let Some(raw) = raw else { continue };
                let entry: DlqEntry =
                    serde_json::from_str(&raw).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                if filter.matches(&entry) {
                    items.push(entry);
                    if items.len() == page.limit {
                        full = true;
                        break;
                    }
                }
            }
            if full || scanned >= budget {
                return Ok(Page {
                    items,
                    next_cursor: cursor.map(|c| c.encode()),
                });
            }
            let Some(next) = next else {
                return Ok(Page {
                    items,
                    next_cursor: None,
                });
            };
            cursor = Some(next);
            chunk_len = (chunk_len * 2).min(256);
        }
    }

    async fn dlq_delete(&self, job_id: &str) -> StoreResult<bool> {
        let mut conn = self.conn.clone();
        let shard = self.shard(job_id);
        let (deleted, _, _): (u64, u64, u64) = ::redis::pipe()
            .atomic()
            .del(self.in_shard(shard, "dlq", job_id))
            .zrem(format!("{}idx:dlq", self.sp(shard)), job_id)
            .zrem(
                self.in_shard(
                    shard,
                    "idx:dlq",
                    crate::ids::tenant_of(job_id).unwrap_or_default(),
                ),
                job_id,
            )
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(deleted == 1)
    }
}

#[async_trait]
impl ConfigStore for RedisStore {
    async fn config_get(&self, keys: &[String]) -> StoreResult<Vec<Option<ConfigDoc>>> {
        if keys.is_empty() {
            // Redis refuses an empty pipeline.
            return Ok(Vec::new());
        }
        let mut pipe = ::redis::pipe();
        for k in keys {
            pipe.cmd("HMGET")
                .arg(self.family_named('c', "config", k))
                .arg("data")
                .arg("revision")
                .arg("updated_at");
        }
        let mut conn = self.conn.clone();
        let replies: Vec<(Option<String>, Option<u64>, Option<i64>)> =
            pipe.query_async(&mut conn).await.map_err(unavailable)?;
        replies
            .into_iter()
            .map(|(data, revision, updated_at)| match (data, revision) {
                (Some(d), Some(revision)) => Ok(Some(ConfigDoc {
                    data: serde_json::from_str(&d)
                        .map_err(|e| StoreError::Corrupt(e.to_string()))?,
                    revision,
                    updated_at: updated_at.unwrap_or_default(),
                })),
                _ => Ok(None),
            })
            .collect()
    }

    async fn config_put(
        &self,
        key: &str,
        data: &Value,
        if_match: Option<u64>,
        now: Millis,
    ) -> StoreResult<ConfigDoc> {
        let mut conn = self.conn.clone();
        let (status, revision): (String, u64) = self
            .scripts
            .config_put
            .key(self.family_named('c', "config", key))
            .key(self.family_key('c', "configs"))
            .arg(if_match.map(|m| m.to_string()).unwrap_or_default())
            .arg(data.to_string())
            .arg(now)
            .arg(key)
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        if status == "conflict" {
            return Err(StoreError::Conflict { current: revision });
        }
        Ok(ConfigDoc {
            data: data.clone(),
            revision,
            updated_at: now,
        })
    }

    async fn config_delete(&self, key: &str, if_match: Option<u64>) -> StoreResult<bool> {
        let mut conn = self.conn.clone();
        let (status, n): (String, u64) = self
            .scripts
            .config_delete
            .key(self.family_named('c', "config", key))
            .key(self.family_key('c', "configs"))
            .arg(if_match.map(|m| m.to_string()).unwrap_or_default())
            .arg(key)
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        if status == "conflict" {
            return Err(StoreError::Conflict { current: n });
        }
        Ok(n == 1)
    }

    async fn config_keys(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<String>> {
        // Scope keys are printable ASCII (identifiers, `:` and `~`), all below 0x7f: every key
        // that starts with `prefix` sorts before `prefix` + 0x7f.
        let (from, to) = if prefix.is_empty() {
            ("-".to_string(), "+".to_string())
        } else {
            (format!("[{prefix}"), format!("({prefix}\x7f"))
        };
        let min = match after {
            Some(a) if a >= prefix => format!("({a}"),
            _ => from,
        };
        let mut conn = self.conn.clone();
        conn.zrangebylex_limit(self.family_key('c', "configs"), min, to, 0, limit as isize)
            .await
            .map_err(unavailable)
    }
}

#[async_trait]
impl Locks for RedisStore {
    async fn lock_acquire(&self, name: &str, owner: &str, ttl_ms: u64) -> StoreResult<bool> {
        let mut conn = self.conn.clone();
        let got: i64 = self
            .scripts
            .lock_acquire
            .key(self.named("lock", name))
            .arg(owner)
            .arg(ttl_ms)
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(got == 1)
    }

    async fn shared_secret(&self) -> StoreResult<Vec<u8>> {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        let key = self.key("secret:bus");
        let mut conn = self.conn.clone();
        // Every replica offers one; the first written stays, and all read that one back.
        let _: Option<String> = ::redis::cmd("SET")
            .arg(&key)
            .arg(b64.encode(fresh_secret()))
            .arg("NX")
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let stored: Option<String> = conn.get(&key).await.map_err(unavailable)?;
        let secret = stored
            .and_then(|s| b64.decode(s).ok())
            .ok_or_else(|| StoreError::Corrupt(format!("`{key}` is not a base64 secret")))?;
        if secret.len() < SHARED_SECRET_BYTES {
            return Err(StoreError::Corrupt(format!(
                "`{key}` holds {} bytes, fewer than {SHARED_SECRET_BYTES}",
                secret.len()
            )));
        }
        Ok(secret)
    }

    async fn lock_release(&self, name: &str, owner: &str) -> StoreResult<bool> {
        let mut conn = self.conn.clone();
        let n: i64 = self
            .scripts
            .lock_release
            .key(self.named("lock", name))
            .arg(owner)
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(n == 1)
    }
}

#[async_trait]
impl PluginBlobs for RedisStore {
    async fn plugin_put(
        &self,
        name: &str,
        bytes: &[u8],
        hash: &str,
        now: Millis,
    ) -> StoreResult<()> {
        let mut conn = self.conn.clone();
        ::redis::pipe()
            .atomic()
            .hset_multiple(
                self.family_named('p', "plugin", name),
                &[
                    ("bytes", bytes),
                    ("hash", hash.as_bytes()),
                    ("updated_at", now.to_string().as_bytes()),
                ],
            )
            .ignore()
            .sadd(self.family_key('p', "plugins"), name)
            .ignore()
            .query_async::<()>(&mut conn)
            .await
            .map_err(unavailable)
    }

    async fn plugin_get(&self, name: &str) -> StoreResult<Option<StoredPlugin>> {
        let mut conn = self.conn.clone();
        let (bytes, hash, updated_at): (Option<Vec<u8>>, Option<String>, Option<i64>) =
            ::redis::cmd("HMGET")
                .arg(self.family_named('p', "plugin", name))
                .arg("bytes")
                .arg("hash")
                .arg("updated_at")
                .query_async(&mut conn)
                .await
                .map_err(unavailable)?;
        Ok(match (bytes, hash) {
            (Some(bytes), Some(hash)) => Some(StoredPlugin {
                name: name.to_string(),
                hash,
                bytes,
                updated_at: updated_at.unwrap_or_default(),
            }),
            _ => None,
        })
    }

    async fn plugin_list(&self) -> StoreResult<Vec<PluginMeta>> {
        let mut conn = self.conn.clone();
        let mut names: Vec<String> = conn
            .smembers(self.family_key('p', "plugins"))
            .await
            .map_err(unavailable)?;
        if names.is_empty() {
            return Ok(Vec::new());
        }
        names.sort();
        let mut pipe = ::redis::pipe();
        for name in &names {
            pipe.cmd("HMGET")
                .arg(self.family_named('p', "plugin", name))
                .arg("hash")
                .arg("updated_at");
        }
        let metas: Vec<(Option<String>, Option<i64>)> =
            pipe.query_async(&mut conn).await.map_err(unavailable)?;
        Ok(names
            .into_iter()
            .zip(metas)
            .filter_map(|(name, (hash, updated_at))| {
                Some(PluginMeta {
                    name,
                    hash: hash?,
                    updated_at: updated_at.unwrap_or_default(),
                })
            })
            .collect())
    }

    async fn plugin_delete(&self, name: &str) -> StoreResult<bool> {
        let mut conn = self.conn.clone();
        let (deleted, _): (i64, i64) = ::redis::pipe()
            .atomic()
            .del(self.family_named('p', "plugin", name))
            .srem(self.family_key('p', "plugins"), name)
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(deleted == 1)
    }
}

#[async_trait]
impl WorkflowStore for RedisStore {
    async fn workflow_put(&self, wf: &Workflow, create: bool) -> StoreResult<()> {
        let mut conn = self.conn.clone();
        let doc = serde_json::to_string(wf).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let head = self.family_named('w', "wf", &wf.id);
        let (status, current): (String, u64) = self
            .scripts
            .workflow_put
            .key(&head)
            .key(format!("{head}:v:{}", wf.version))
            .key(self.family_key('w', "wfs"))
            .arg(wf.version)
            .arg(doc)
            .arg(&wf.id)
            .arg(if create { "1" } else { "" })
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        if status == "conflict" {
            return Err(StoreError::Conflict { current });
        }
        Ok(())
    }

    async fn workflow_head(&self, id: &str) -> StoreResult<Option<WorkflowHead>> {
        let mut conn = self.conn.clone();
        let head = self.family_named('w', "wf", id);
        let (latest, live): (Option<u64>, bool) = ::redis::pipe()
            .hget(&head, "latest")
            .hexists(&head, "doc")
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(latest.map(|latest| WorkflowHead { latest, live }))
    }

    async fn workflow_get(&self, id: &str, version: Option<u64>) -> StoreResult<Option<Workflow>> {
        let mut conn = self.conn.clone();
        let head = self.family_named('w', "wf", id);
        let raw: Option<String> = match version {
            Some(v) => conn.get(format!("{head}:v:{v}")).await,
            None => conn.hget(&head, "doc").await,
        }
        .map_err(unavailable)?;
        raw.map(|r| serde_json::from_str(&r).map_err(|e| StoreError::Corrupt(e.to_string())))
            .transpose()
    }

    async fn workflow_list(
        &self,
        org: Option<&str>,
        page: &PageRequest,
    ) -> StoreResult<Page<Workflow>> {
        // By id, lexicographically; an org's ids (`org~…`) are one range of it, so its page
        // and its cursor hold only its own.
        let mut conn = self.conn.clone();
        let (from, to) = match org {
            Some(o) => (
                format!("[{}", crate::ids::qualify(o, "")),
                format!("({o}\x7f"),
            ),
            None => ("-".to_string(), "+".to_string()),
        };
        let min = page.cursor.as_ref().map_or(from, |c| format!("({}", c.id));
        let ids: Vec<String> = conn
            .zrangebylex_limit(self.family_key('w', "wfs"), min, to, 0, page.limit as isize)
            .await
            .map_err(unavailable)?;
        let Some(last) = ids.last().cloned() else {
            return Ok(Page {
                items: Vec::new(),
                next_cursor: None,
            });
        };
        let mut pipe = ::redis::pipe();
        for id in &ids {
            pipe.hget(self.family_named('w', "wf", id), "doc");
        }
        let raws: Vec<Option<String>> = pipe.query_async(&mut conn).await.map_err(unavailable)?;
        let items = raws
            .into_iter()
            .flatten()
            .map(|r| serde_json::from_str(&r).map_err(|e| StoreError::Corrupt(e.to_string())))
            .collect::<StoreResult<Vec<Workflow>>>()?;
        let next = (ids.len() == page.limit).then(|| workflow_cursor(&last));
        Ok(Page {
            items,
            next_cursor: next,
        })
    }

    async fn workflow_delete(&self, id: &str) -> StoreResult<bool> {
        // The hash keeps `latest`, so a workflow created again under this id continues its
        // versions and never writes over one a run still follows.
        let mut conn = self.conn.clone();
        let (deleted, _): (u64, u64) = ::redis::pipe()
            .atomic()
            .hdel(self.family_named('w', "wf", id), "doc")
            .zrem(self.family_key('w', "wfs"), id)
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(deleted == 1)
    }

    async fn run_put(&self, run: &Run) -> StoreResult<u64> {
        let mut conn = self.conn.clone();
        let mut saved = run.clone();
        saved.revision = run.revision + 1;
        let doc = serde_json::to_string(&saved).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let shard = self.shard(&run.id);
        let (status, revision): (String, u64) = self
            .scripts
            .run_put
            .key(self.in_shard(shard, "run", &run.id))
            .key(self.run_index(shard, &RunIndex::Workflow(&run.workflow_id)))
            .key(self.run_index(shard, &RunIndex::All))
            .key(self.run_index(shard, &RunIndex::Status(run.status)))
            .key(format!("{}runs:names", self.sp(shard)))
            .key(self.run_index(shard, &RunIndex::Org(&run.org_id)))
            .arg(run.revision)
            .arg(doc)
            .arg(run.status.as_str())
            .arg(run.started_at)
            .arg(&run.id)
            .arg(format!("{}runs:status:", self.sp(shard)))
            .arg(if run.status.is_terminal() {
                self.opts.job_ttl_ms.to_string()
            } else {
                String::new()
            })
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        if status == "conflict" {
            return Err(StoreError::Conflict { current: revision });
        }
        Ok(revision)
    }

    async fn run_prune_indexes(&self) -> StoreResult<u64> {
        let before = now_ms() - self.opts.job_ttl_ms as Millis;
        let mut removed = 0;
        for i in 0..self.shards.len() {
            let mut conn = self.conn.clone();
            let names_key = format!("{}runs:names", self.sp(i));
            let mut keys: Vec<String> = conn.smembers(&names_key).await.map_err(unavailable)?;
            let by_workflow = keys.len();
            keys.push(self.run_index(i, &RunIndex::All));
            keys.extend(
                Status::RUN_ENDS
                    .iter()
                    .map(|s| self.run_index(i, &RunIndex::Status(*s))),
            );
            let record = format!("{}run:{{", self.sp(i));
            let (gone, empty) = self
                .prune(&keys, by_workflow, &record, before, &|_| false)
                .await?;
            removed += gone;
            if !empty.is_empty() {
                let _: () = conn.srem(&names_key, empty).await.map_err(unavailable)?;
            }
        }
        Ok(removed)
    }

    async fn run_get(&self, id: &str) -> StoreResult<Option<Run>> {
        let mut conn = self.conn.clone();
        let raw: Option<String> = conn
            .hget(self.record("run", id), "doc")
            .await
            .map_err(unavailable)?;
        raw.map(|r| serde_json::from_str(&r).map_err(|e| StoreError::Corrupt(e.to_string())))
            .transpose()
    }

    async fn run_list(&self, filter: &RunFilter, page: &PageRequest) -> StoreResult<Page<Run>> {
        // One chunk of the shards' indexes after the cursor, merged (the same tie order as the
        // job lists), then the documents in one pipeline per shard; filtered here.
        let want = scan_budget(page.limit).min(page.limit * 4);
        let (entries, next) = self
            .merged_after(
                &|i| self.run_index(i, &RunIndex::of(filter)),
                page.cursor.as_ref(),
                want,
            )
            .await?;
        if entries.is_empty() {
            return Ok(Page {
                items: Vec::new(),
                next_cursor: next.map(|c| c.encode()),
            });
        }
        let ids: Vec<String> = entries.iter().map(|(id, _, _)| id.clone()).collect();
        let raws: Vec<Option<String>> = self
            .per_record(&ids, &|id| {
                let mut c = ::redis::cmd("HGET");
                c.arg(self.record("run", id)).arg("doc");
                c
            })
            .await?;
        let mut items = Vec::new();
        let mut last = None;
        for ((id, score, _), raw) in entries.iter().zip(raws) {
            last = Some(Cursor {
                score: *score,
                id: id.clone(),
            });
            let Some(raw) = raw else { continue };
            let run: Run =
                serde_json::from_str(&raw).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            if filter.matches(&run) {
                items.push(run);
                if items.len() == page.limit {
                    break;
                }
            }
        }
        let next_cursor = if items.len() == page.limit {
            last
        } else {
            // Every entry of the chunk was looked at: on from where the merged walk stopped.
            next
        };
        Ok(Page {
            items,
            next_cursor: next_cursor.map(|c| c.encode()),
        })
    }
}
