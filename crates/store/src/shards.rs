//! Logical shards, for a store past one Redis (issue 17): which shard a record belongs to, the
//! hash tag that keeps a shard's keys on one Redis Cluster node, and listings merged across
//! shards.
//!
//! A job (or run) lives in one of S shards, chosen by a stable hash of its whole, tenant-qualified
//! id, and every index it is in is its shard's own; an atomic script then touches one shard's
//! keys only, which is what Redis Cluster requires of a script (its keys in one hash slot).
//!
//! A listing — jobs newest first, a state, a tenant — is the merge of the shards' own listings
//! in listing order (score descending, ties by id descending). That order is total, so one
//! position in it — the last `(score, id)` a page returned — says where every shard stands:
//! each shard goes on strictly after it. The cursor a merged page hands out is therefore the
//! same one-position cursor a single index hands out, and a page never repeats or skips an
//! entry of any shard, whichever shards the entries of the previous pages came from. What a
//! merge must take care of is a shard that stopped early (it answered its whole page, or ran
//! out of its scan budget) at a position above the others: an entry of that shard below its
//! stop is unknown, so the page ends at the highest such stop — its [`frontier`](merge).

use crate::Cursor;

/// Hash slots in Redis Cluster.
const SLOTS: u32 = 16_384;

/// Which of `shards` shards the record `id` belongs to: FNV-1a (64-bit) of the id, modulo the
/// shard count. Stable across processes and versions — the shard is part of where the record is
/// stored — which a seeded hasher is not.
pub fn shard_of(id: &str, shards: u16) -> u16 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let hash = id
        .bytes()
        .fold(OFFSET, |h, b| (h ^ u64::from(b)).wrapping_mul(PRIME));
    u16::try_from(hash % u64::from(shards.max(1))).unwrap_or(0)
}

/// The Redis Cluster hash slot of a hash tag (CRC16/XMODEM modulo 16384, as Redis computes it).
pub fn slot_of(tag: &str) -> u16 {
    let crc = crc16::State::<crc16::XMODEM>::calculate(tag.as_bytes());
    u16::try_from(u32::from(crc) % SLOTS).unwrap_or(0)
}

/// The hash tags of `shards` shards, braces included (`{s0}`, `{s1.7}`, …): shard `i`'s tag
/// falls in the `i`-th of `shards` equal ranges of hash slots. A cluster made by `redis-cli
/// --cluster create` gives each master one contiguous range of slots, so the shards — and the
/// jobs, spread evenly over the shards by [`shard_of`] — spread over the masters as evenly as
/// `shards` allows (16 shards on 3 masters: 5, 5 and 6), where tags picked at random would
/// leave one master with twice another's share now and then. A tag is `s{i}`, or `s{i}.{n}`
/// for the first `n` that lands in range: the same on every replica and in every version.
pub fn shard_tags(shards: u16) -> Vec<String> {
    let count = u32::from(shards.max(1));
    (0..count)
        .map(|i| {
            let (lo, hi) = (i * SLOTS / count, (i + 1) * SLOTS / count);
            let in_range = |t: &str| (lo..hi).contains(&u32::from(slot_of(t)));
            let plain = format!("s{i}");
            if in_range(&plain) {
                return format!("{{{plain}}}");
            }
            (1u32..)
                .map(|n| format!("s{i}.{n}"))
                .find(|t| in_range(t))
                .map_or_else(|| format!("{{{plain}}}"), |t| format!("{{{t}}}"))
        })
        .collect()
}

/// The key prefix of the shard that holds the record `id`, in a Redis store under `prefix` with
/// `shards` shards: what every key of that record starts with (see `redis.rs`).
pub fn shard_prefix(prefix: &str, id: &str, shards: u16) -> String {
    let tags = shard_tags(shards);
    let tag = tags
        .get(usize::from(shard_of(id, shards)))
        .map_or("", String::as_str);
    format!("{prefix}{tag}:")
}

/// Where `(score, id)` stands in listing order: greater comes first.
fn key(c: &Cursor) -> (i64, &str) {
    (c.score, c.id.as_str())
}

/// What one shard answered for a page: its entries after the page's cursor in listing order
/// (`(score, id)` and the item), and where it stopped when it may hold more (the last entry it
/// looked at — a listing that filters looks at more than it answers), `None` when it has
/// nothing more after its entries.
#[derive(Debug, Clone)]
pub struct ShardPage<T> {
    pub items: Vec<(Cursor, T)>,
    pub stopped_at: Option<Cursor>,
}

/// One page of a listing merged across shards: up to `limit` entries in listing order, and the
/// cursor after them — `None` when the page is short and every shard is exhausted.
///
/// The frontier is the highest position at which a shard stopped with more to come; entries
/// below it are not known for that shard yet, so the page takes only entries at or above it,
/// and when fewer than `limit` are, the next page starts from the frontier itself (every shard
/// has been looked at down to it).
pub fn merge<T>(pages: Vec<ShardPage<T>>, limit: usize) -> (Vec<T>, Option<Cursor>) {
    let frontier: Option<Cursor> = pages
        .iter()
        .filter_map(|p| p.stopped_at.clone())
        .max_by(|a, b| key(a).cmp(&key(b)));
    let mut all: Vec<(Cursor, T)> = pages
        .into_iter()
        .flat_map(|p| p.items)
        .filter(|(c, _)| frontier.as_ref().is_none_or(|f| key(c) >= key(f)))
        .collect();
    all.sort_by(|(a, _), (b, _)| key(b).cmp(&key(a)));
    let total = all.len();
    all.truncate(limit);
    // A full page hands out a cursor at its last entry (as a single index does, whether or not
    // anything follows it).
    let next = if total >= limit {
        all.last().map(|(c, _)| c.clone())
    } else {
        // Everything down to the frontier is in the page (with no frontier: everything).
        frontier
    };
    (all.into_iter().map(|(_, t)| t).collect(), next)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Entry(i64, String);

    /// Shards as a store keeps them, each its own index in listing order.
    struct Shards(Vec<Vec<Entry>>);

    impl Shards {
        fn add(&mut self, e: Entry) {
            let shard = usize::from(shard_of(&e.1, self.count()));
            let index = &mut self.0[shard];
            index.push(e);
            index.sort_by(|a, b| (b.0, &b.1).cmp(&(a.0, &a.1)));
        }

        fn count(&self) -> u16 {
            u16::try_from(self.0.len()).unwrap()
        }

        /// What shard `i` answers: the entries strictly after `from` that pass `keep`, up to
        /// `limit` of them or `budget` entries looked at.
        fn page(
            &self,
            i: usize,
            from: Option<&Cursor>,
            limit: usize,
            budget: usize,
            keep: &dyn Fn(&Entry) -> bool,
        ) -> ShardPage<Entry> {
            let after = self.0[i]
                .iter()
                .filter(|e| from.is_none_or(|c| (e.0, e.1.as_str()) < (c.score, c.id.as_str())));
            let mut items = Vec::new();
            let mut looked = 0;
            for e in after {
                looked += 1;
                let at = Cursor {
                    score: e.0,
                    id: e.1.clone(),
                };
                if keep(e) {
                    items.push((at.clone(), e.clone()));
                }
                if items.len() == limit || looked == budget {
                    return ShardPage {
                        items,
                        stopped_at: Some(at),
                    };
                }
            }
            ShardPage {
                items,
                stopped_at: None,
            }
        }

        /// One page of the whole listing, through the cursor's text as a client would hold it.
        fn list(
            &self,
            cursor: Option<&str>,
            limit: usize,
            budget: usize,
            keep: &dyn Fn(&Entry) -> bool,
        ) -> (Vec<Entry>, Option<String>) {
            let from = cursor.map(|c| Cursor::decode(c).expect("our own cursor"));
            let pages = (0..self.0.len())
                .map(|i| self.page(i, from.as_ref(), limit, budget, keep))
                .collect();
            let (items, next) = merge(pages, limit);
            (items, next.map(|c| c.encode()))
        }
    }

    fn entries() -> impl Strategy<Value = Vec<Entry>> {
        // Few distinct scores, so ties across shards are common.
        proptest::collection::btree_set(("[a-z0-9]{1,6}", 0i64..20), 0..80).prop_map(|set| {
            set.into_iter()
                .map(|(id, score)| Entry(score, format!("t~{id}")))
                .collect()
        })
    }

    fn sorted(mut v: Vec<Entry>) -> Vec<Entry> {
        v.sort_by(|a, b| (b.0, &b.1).cmp(&(a.0, &a.1)));
        v.dedup_by(|a, b| a.1 == b.1);
        v
    }

    proptest! {
        /// Paging through every shard returns each entry that passes the filter once, in
        /// listing order, however small the scan budget; entries added at the top meanwhile
        /// (newer than every page read) neither repeat nor shift what follows.
        #[test]
        fn pages_merge_in_order_without_gaps_or_repeats(
            initial in entries(),
            added in entries(),
            shards in 1u16..6,
            limit in 1usize..12,
            budget in 1usize..30,
            modulo in 1usize..4,
        ) {
            let keep = move |e: &Entry| e.1.len().is_multiple_of(modulo);
            let initial = sorted(initial);
            let mut store = Shards(vec![Vec::new(); usize::from(shards)]);
            for e in &initial {
                store.add(e.clone());
            }
            let mut seen = Vec::new();
            let mut cursor: Option<String> = None;
            let mut newer = added.into_iter().map(|Entry(s, id)| Entry(s + 1_000, format!("n~{id}")));
            for round in 0.. {
                prop_assert!(round <= initial.len() + 1, "the listing does not end");
                let (items, next) = store.list(cursor.as_deref(), limit, budget.max(limit), &keep);
                prop_assert!(items.len() <= limit);
                seen.extend(items);
                if let Some(e) = newer.next() {
                    store.add(e);
                }
                match next {
                    Some(c) => cursor = Some(c),
                    None => break,
                }
            }
            let want: Vec<Entry> = initial.into_iter().filter(|e| keep(e)).collect();
            prop_assert_eq!(seen, want);
        }
    }

    #[test]
    fn shards_are_stable_and_spread() {
        assert_eq!(shard_of("acme~order-42", 16), shard_of("acme~order-42", 16));
        let mut counts = [0u32; 8];
        for i in 0..8_000 {
            counts[usize::from(shard_of(&format!("acme~job-{i}"), 8))] += 1;
        }
        assert!(
            counts.iter().all(|n| (800..1_200).contains(n)),
            "{counts:?}"
        );
    }

    #[test]
    fn slots_are_redis_cluster_slots() {
        // Values from Redis itself (`CLUSTER KEYSLOT`).
        assert_eq!(slot_of("foo"), 12182);
        assert_eq!(slot_of("bar"), 5061);
        assert_eq!(slot_of("123456789"), 12739);
    }

    #[test]
    fn shard_tags_spread_over_equal_slot_ranges() {
        for shards in [1u16, 3, 16, 64] {
            let tags = shard_tags(shards);
            assert_eq!(tags.len(), usize::from(shards));
            for (i, tag) in tags.iter().enumerate() {
                let inner = tag.trim_start_matches('{').trim_end_matches('}');
                let slot = u32::from(slot_of(inner));
                let (lo, hi) = (
                    i as u32 * SLOTS / u32::from(shards),
                    (i as u32 + 1) * SLOTS / u32::from(shards),
                );
                assert!((lo..hi).contains(&slot), "{tag} in slot {slot}");
            }
        }
        assert_eq!(shard_tags(16), shard_tags(16), "stable");
        // Masters with equal contiguous ranges hold equal numbers of shards, or nearly.
        let per_master = |shards: u16, masters: u32| {
            let mut counts = vec![0; masters as usize];
            for tag in shard_tags(shards) {
                let slot = u32::from(slot_of(tag.trim_start_matches('{').trim_end_matches('}')));
                counts[(slot * masters / SLOTS) as usize] += 1;
            }
            counts.sort();
            counts
        };
        assert_eq!(per_master(16, 3), [5, 5, 6]);
        for masters in [2, 3, 4, 6] {
            assert_eq!(
                per_master(12, masters),
                vec![12 / masters; masters as usize]
            );
        }
    }
}
