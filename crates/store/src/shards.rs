//! Logical shards, for a store past one Redis (issue 17): which shard a record belongs to, the
//! hash tag that keeps a shard's keys on one Redis Cluster node, and listings merged across
//! shards.
//!
//! A job (or run) lives in one of S shards, chosen by a stable hash of its whole, tenant-qualified
//! id, and every index it is in is its shard's own; an atomic script then touches one shard's
//! keys only, which is what Redis Cluster requires of a script (its keys in one hash slot). A
//! listing — jobs newest first, a state, a tenant — is the k-way merge of the shards' own
//! listings by score, and its cursor holds a position per shard: paging on reads, from each
//! shard, what comes after that shard's position, so a page never repeats or skips an entry of
//! any shard, whichever shards the entries of the previous pages came from.

use std::collections::VecDeque;

use base64::Engine as _;

use super::Cursor;

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

/// The hash tag of shard `shard`: every key of the shard carries it, so Redis Cluster keeps the
/// shard's keys in one slot and a script may touch them together.
pub fn hash_tag(shard: u16) -> String {
    format!("{{s{shard}}}")
}

/// An entry of a listing. Listings run by score descending, ties by id descending.
pub trait Listed {
    fn score(&self) -> i64;
    fn id(&self) -> &str;
}

/// Where a merged listing stands in one shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Position {
    /// Nothing read from this shard yet.
    Start,
    /// The last entry of this shard a page returned.
    After(Cursor),
    /// Every entry of this shard has been returned.
    Done,
}

/// Where a merged listing stands in each shard: the cursor a page hands out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergedCursor(pub Vec<Position>);

impl MergedCursor {
    /// The cursor of a listing not begun, over `shards` shards.
    pub fn start(shards: u16) -> Self {
        MergedCursor(vec![Position::Start; usize::from(shards)])
    }

    /// As text for an API cursor: per shard `*` (start), `!` (done) or `score:id`, joined by
    /// `,` (ids never hold one), in URL-safe base64.
    pub fn encode(&self) -> String {
        let text = self
            .0
            .iter()
            .map(|p| match p {
                Position::Start => "*".to_string(),
                Position::Done => "!".to_string(),
                Position::After(c) => format!("{}:{}", c.score, c.id),
            })
            .collect::<Vec<_>>()
            .join(",");
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
    }

    /// A cursor handed out by [`MergedCursor::encode`] for a listing over `shards` shards;
    /// `None` for anything else (a cursor of another shard count included).
    pub fn decode(s: &str, shards: u16) -> Option<Self> {
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(s)
            .ok()?;
        let text = String::from_utf8(raw).ok()?;
        let positions = text
            .split(',')
            .map(|p| match p {
                "*" => Some(Position::Start),
                "!" => Some(Position::Done),
                _ => {
                    let (score, id) = p.split_once(':')?;
                    (!id.is_empty()).then_some(())?;
                    Some(Position::After(Cursor {
                        score: score.parse().ok()?,
                        id: id.to_string(),
                    }))
                }
            })
            .collect::<Option<Vec<_>>>()?;
        (positions.len() == usize::from(shards)).then_some(MergedCursor(positions))
    }
}

/// What one shard answered: up to the page's limit of entries after its position, in listing
/// order, and whether more follow them.
#[derive(Debug, Clone)]
pub struct ShardPage<T> {
    pub items: Vec<T>,
    pub more: bool,
}

/// The next page of a listing merged across shards: the first `limit` entries of the shards'
/// pages in listing order, and the cursor after them (`None` when every shard is done).
/// `pages[i]` is what shard `i` answered from `from.0[i]` (an empty page for a shard that is
/// done).
pub fn merge<T: Listed>(
    from: &MergedCursor,
    pages: Vec<ShardPage<T>>,
    limit: usize,
) -> (Vec<T>, Option<MergedCursor>) {
    let mut positions = from.0.clone();
    let more: Vec<bool> = pages.iter().map(|p| p.more).collect();
    let mut heads: Vec<VecDeque<T>> = pages.into_iter().map(|p| p.items.into()).collect();
    let mut out = Vec::with_capacity(limit);
    let mut contributed = vec![false; heads.len()];
    while out.len() < limit {
        // The shard whose head comes first: the highest score, ties by the highest id.
        let mut best: Option<(usize, i64, &str)> = None;
        for (i, head) in heads.iter().enumerate() {
            let Some(item) = head.front() else { continue };
            let key = (item.score(), item.id());
            if best.is_none_or(|(_, score, id)| key > (score, id)) {
                best = Some((i, key.0, key.1));
            }
        }
        let Some((i, _, _)) = best else { break };
        let Some(item) = heads.get_mut(i).and_then(VecDeque::pop_front) else {
            break;
        };
        if let Some(p) = positions.get_mut(i) {
            *p = Position::After(Cursor {
                score: item.score(),
                id: item.id().to_string(),
            });
        }
        if let Some(c) = contributed.get_mut(i) {
            *c = true;
        }
        out.push(item);
    }
    // A shard that gave nothing to this page moves to its end all the same: whatever it holds
    // after its position comes after the page's last entry (or it would be in the page). Left
    // where it was, a shard not read yet would start from its top on the next page, and return
    // entries added since the listing began, above the cursor.
    if let Some(last) = out.last() {
        let boundary = Cursor {
            score: last.score(),
            id: last.id().to_string(),
        };
        for (p, gave) in positions.iter_mut().zip(&contributed) {
            if !gave && *p != Position::Done {
                *p = Position::After(boundary.clone());
            }
        }
    }
    // A shard whose page was its last and was taken whole is done.
    for ((p, head), more) in positions.iter_mut().zip(&heads).zip(&more) {
        if head.is_empty() && !more {
            *p = Position::Done;
        }
    }
    let next = positions
        .iter()
        .any(|p| *p != Position::Done)
        .then_some(MergedCursor(positions));
    (out, next)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Entry(i64, String);

    impl Listed for Entry {
        fn score(&self) -> i64 {
            self.0
        }
        fn id(&self) -> &str {
            &self.1
        }
    }

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

        /// What shard `i` answers: up to `limit` entries strictly after `from`.
        fn page(&self, i: usize, from: &Position, limit: usize) -> ShardPage<Entry> {
            let after: Vec<Entry> = match from {
                Position::Done => Vec::new(),
                Position::Start => self.0[i].clone(),
                Position::After(c) => self.0[i]
                    .iter()
                    .filter(|e| (e.0, e.1.as_str()) < (c.score, c.id.as_str()))
                    .cloned()
                    .collect(),
            };
            ShardPage {
                more: after.len() > limit,
                items: after.into_iter().take(limit).collect(),
            }
        }

        /// One page of the whole listing, through the cursor's text as a client would hold it.
        fn list(&self, cursor: Option<&str>, limit: usize) -> (Vec<Entry>, Option<String>) {
            let from = match cursor {
                None => MergedCursor::start(self.count()),
                Some(c) => MergedCursor::decode(c, self.count()).expect("our own cursor"),
            };
            let pages = (0..self.0.len())
                .map(|i| self.page(i, &from.0[i], limit))
                .collect();
            let (items, next) = merge(&from, pages, limit);
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
        /// Paging through every shard returns each entry once, in listing order, and entries
        /// added at the top meanwhile (newer than every page read) neither repeat nor shift
        /// what follows.
        #[test]
        fn pages_merge_in_order_without_gaps_or_repeats(
            initial in entries(),
            added in entries(),
            shards in 1u16..6,
            limit in 1usize..12,
        ) {
            let initial = sorted(initial);
            let mut store = Shards(vec![Vec::new(); usize::from(shards)]);
            for e in &initial {
                store.add(e.clone());
            }
            let mut seen = Vec::new();
            let mut cursor: Option<String> = None;
            let mut newer = added.into_iter().map(|Entry(s, id)| Entry(s + 1_000, format!("n~{id}")));
            for round in 0.. {
                prop_assert!(round <= initial.len(), "the listing does not end");
                let (items, next) = store.list(cursor.as_deref(), limit);
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
            prop_assert_eq!(seen, initial);
        }

        #[test]
        fn a_cursor_reads_back_as_it_was_written(
            positions in proptest::collection::vec(
                prop_oneof![
                    Just(Position::Start),
                    Just(Position::Done),
                    (any::<i64>(), "[a-zA-Z0-9._:~-]{1,20}")
                        .prop_map(|(score, id)| Position::After(Cursor { score, id })),
                ],
                1..8,
            )
        ) {
            let c = MergedCursor(positions);
            let shards = u16::try_from(c.0.len()).unwrap();
            prop_assert_eq!(MergedCursor::decode(&c.encode(), shards), Some(c.clone()));
            prop_assert_eq!(MergedCursor::decode(&c.encode(), shards + 1), None);
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
        assert_eq!(hash_tag(7), "{s7}");
    }

    #[test]
    fn foreign_cursors_are_refused() {
        assert_eq!(MergedCursor::decode("not base64!", 2), None);
        let text = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("*,12:");
        assert_eq!(MergedCursor::decode(&text, 2), None);
    }
}
