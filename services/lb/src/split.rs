//! The weighted split of a service's requests between its revisions (canary releases).
//!
//! [`Weights`] is the validated split from etcd (`Service.traffic`); [`Split`] turns it into
//! a sequence of revisions by smooth weighted round robin (nginx's algorithm): every pick
//! adds each revision's weight to its running credit, takes the revision with the most
//! credit and charges it the total. Over any window of `total` picks each revision gets
//! exactly its weight, and picks of a small revision are spread out rather than bunched, so
//! 95/5 over 10,000 requests is 9,500/500 exactly — no RNG, no "roughly".
//!
//! A sticky canary ([`Sticky`], whose syntax `rctl_api::routing` shares with the CLI and the
//! scheduler) maps a request that carries the service's key (a header or a cookie) to a
//! revision by a hash of the key instead ([`Weights::by_hash`]): the same key
//! always lands on the same revision (on every LB, the hash is fixed), and over many
//! distinct keys the shares follow the weights. Requests without the key keep the exact
//! round robin.

/// A validated split: at least one revision, each once, every weight positive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Weights {
    /// `(revision, weight)`, ordered by revision so equal splits compare equal.
    entries: Vec<(u64, u32)>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SplitError {
    #[error("traffic split has no revision with a positive weight")]
    Empty,
    #[error("traffic split lists revision {revision} twice")]
    DuplicateRevision { revision: u64 },
}

impl Weights {
    /// Validates `(revision, weight)` pairs. Zero weights are dropped (a revision at 0 is
    /// out of the split, which is how a rollout ends one); a revision listed twice is an
    /// error rather than a guess at which weight was meant.
    pub fn new(pairs: impl IntoIterator<Item = (u64, u32)>) -> Result<Self, SplitError> {
        let mut entries: Vec<(u64, u32)> = pairs.into_iter().filter(|(_, w)| *w > 0).collect();
        entries.sort_unstable();
        if let Some(pair) = entries.windows(2).find(|p| p[0].0 == p[1].0) {
            return Err(SplitError::DuplicateRevision {
                revision: pair[0].0,
            });
        }
        if entries.is_empty() {
            return Err(SplitError::Empty);
        }
        Ok(Self { entries })
    }

    /// Whether `revision` has a share of the traffic.
    pub fn contains(&self, revision: u64) -> bool {
        self.entries.iter().any(|(r, _)| *r == revision)
    }

    /// `(revision, weight)` ordered by revision.
    pub fn entries(&self) -> &[(u64, u32)] {
        &self.entries
    }

    /// The revision whose share of `[0, total)` the hash falls in, the hash read as a
    /// point in `[0, 1)` scaled to the total weight (integer maths, so every LB agrees).
    pub fn by_hash(&self, hash: u64) -> u64 {
        let total: u64 = self.entries.iter().map(|(_, w)| u64::from(*w)).sum();
        let point = ((u128::from(hash) * u128::from(total)) >> 64) as u64;
        let mut upto = 0;
        for (revision, weight) in &self.entries {
            upto += u64::from(*weight);
            if point < upto {
                return *revision;
            }
        }
        // Unreachable: point < total; the last revision is the safe answer anyway.
        self.entries[self.entries.len() - 1].0
    }
}

pub use rctl_api::routing::{Sticky, StickyError};

/// FNV-1a, then a splitmix64 finaliser so the high bits [`Weights::by_hash`] reads are
/// well mixed even for short, similar keys. Fixed, unlike std's hasher: every LB and every
/// version must send a key to the same revision.
pub fn hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The running state of smooth weighted round robin over [`Weights`].
#[derive(Debug, Clone)]
pub struct Split {
    weights: Weights,
    total: i64,
    /// Running credit of each entry of `weights`.
    credit: Vec<i64>,
}

impl Split {
    pub fn new(weights: Weights) -> Self {
        let total = weights.entries.iter().map(|(_, w)| i64::from(*w)).sum();
        let credit = vec![0; weights.entries.len()];
        Self {
            weights,
            total,
            credit,
        }
    }

    pub fn weights(&self) -> &Weights {
        &self.weights
    }

    /// The revision the next request goes to.
    pub fn pick(&mut self) -> u64 {
        let mut best = 0;
        for (i, (_, w)) in self.weights.entries.iter().enumerate() {
            self.credit[i] += i64::from(*w);
            // Strictly greater: ties go to the lowest revision, keeping the order fixed.
            if self.credit[i] > self.credit[best] {
                best = i;
            }
        }
        self.credit[best] -= self.total;
        self.weights.entries[best].0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn counts(split: &mut Split, n: usize) -> BTreeMap<u64, usize> {
        let mut out = BTreeMap::new();
        for _ in 0..n {
            *out.entry(split.pick()).or_default() += 1;
        }
        out
    }

    #[test]
    fn shares_are_exact_over_whole_cycles() {
        let mut s = Split::new(Weights::new([(1, 95), (2, 5)]).unwrap());
        assert_eq!(
            counts(&mut s, 10_000),
            BTreeMap::from([(1, 9_500), (2, 500)])
        );
        let mut s = Split::new(Weights::new([(7, 1), (8, 1)]).unwrap());
        assert_eq!(
            counts(&mut s, 10_000),
            BTreeMap::from([(7, 5_000), (8, 5_000)])
        );
        let mut s = Split::new(Weights::new([(1, 3), (2, 2), (3, 1)]).unwrap());
        assert_eq!(
            counts(&mut s, 600),
            BTreeMap::from([(1, 300), (2, 200), (3, 100)])
        );
    }

    #[test]
    fn any_window_is_within_one_of_the_share() {
        // Smoothness: in every prefix, each revision is within one pick of its exact share,
        // so even a short window (or a split replaced midway) is close to the weights.
        let mut s = Split::new(Weights::new([(1, 90), (2, 7), (3, 3)]).unwrap());
        let mut seen = BTreeMap::<u64, f64>::new();
        for n in 1..=1_000u32 {
            *seen.entry(s.pick()).or_default() += 1.0;
            for (rev, w) in [(1, 90.0), (2, 7.0), (3, 3.0)] {
                let want = f64::from(n) * w / 100.0;
                let got = seen.get(&rev).copied().unwrap_or(0.0);
                assert!(
                    (got - want).abs() <= 1.0,
                    "n={n} rev={rev} got={got} want={want}"
                );
            }
        }
    }

    #[test]
    fn canary_picks_are_spread_out() {
        let mut s = Split::new(Weights::new([(1, 95), (2, 5)]).unwrap());
        let picks: Vec<u64> = (0..100).map(|_| s.pick()).collect();
        let at: Vec<usize> = (0..100).filter(|i| picks[*i] == 2).collect();
        assert_eq!(at.len(), 5);
        assert!(at.windows(2).all(|w| w[1] - w[0] == 20), "{at:?}");
    }

    #[test]
    fn a_single_revision_gets_everything() {
        let mut s = Split::new(Weights::new([(4, 1), (5, 0)]).unwrap());
        assert!((0..50).all(|_| s.pick() == 4));
    }

    #[test]
    fn bad_splits_are_rejected() {
        assert_eq!(Weights::new([]), Err(SplitError::Empty));
        assert_eq!(Weights::new([(1, 0), (2, 0)]), Err(SplitError::Empty));
        assert_eq!(
            Weights::new([(1, 50), (2, 10), (1, 40)]),
            Err(SplitError::DuplicateRevision { revision: 1 })
        );
        // The largest weights do not overflow the credit.
        let mut s = Split::new(Weights::new([(1, u32::MAX), (2, u32::MAX)]).unwrap());
        assert_eq!(counts(&mut s, 4), BTreeMap::from([(1, 2), (2, 2)]));
    }

    #[test]
    fn equal_splits_compare_equal_in_any_order() {
        assert_eq!(
            Weights::new([(2, 5), (1, 95)]).unwrap(),
            Weights::new([(1, 95), (2, 5), (3, 0)]).unwrap()
        );
    }

    #[test]
    fn sticky_keys_follow_the_weights_over_many_keys() {
        let w = Weights::new([(1, 95), (2, 5)]).unwrap();
        let mut canary = 0;
        for i in 0..100_000 {
            if w.by_hash(hash(format!("user-{i}").as_bytes())) == 2 {
                canary += 1;
            }
        }
        // 5% of 100,000 keys; a fair hash stays well within ±0.5 points.
        assert!((4_500..=5_500).contains(&canary), "{canary}");
        let even = Weights::new([(7, 1), (8, 1)]).unwrap();
        let sevens = (0..10_000)
            .filter(|i| even.by_hash(hash(format!("k{i}").as_bytes())) == 7)
            .count();
        assert!((4_800..=5_200).contains(&sevens), "{sevens}");
    }

    #[test]
    fn by_hash_covers_the_ends_of_the_range() {
        let w = Weights::new([(1, 1), (2, 1), (3, 2)]).unwrap();
        assert_eq!(w.by_hash(0), 1);
        assert_eq!(w.by_hash(u64::MAX / 4 - 1), 1);
        assert_eq!(w.by_hash(u64::MAX / 4 + 1), 2);
        assert_eq!(w.by_hash(u64::MAX / 2 + 1), 3);
        assert_eq!(w.by_hash(u64::MAX), 3);
    }

    #[test]
    fn a_key_maps_to_the_same_revision_every_time() {
        let w = Weights::new([(1, 50), (2, 50)]).unwrap();
        let first = w.by_hash(hash(b"alice"));
        assert!((0..100).all(|_| w.by_hash(hash(b"alice")) == first));
        // The hash is fixed across builds, versions and LBs (FNV-1a + splitmix64 of
        // "alice", computed independently).
        assert_eq!(hash(b"alice"), 0xc5d1_556d_6677_4a5c);
    }
}
