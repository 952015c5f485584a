//! The timeline's lanes without the events: per vCPU (actor) and bucket of consecutive events,
//! how many events ran at each level and the worst anomaly, counted by the loader's pass.
//!
//! The loader hands over [`Bucket`]s of [`FINE_EVENTS`] events; [`Lanes`] keeps at most
//! [`MAX_BUCKETS`] buckets by doubling their size (merging neighbours) whenever it would hold
//! more, so memory stays bounded whatever the trace's length and a column of the lanes
//! aggregates a bounded number of buckets: drawing costs O(width), not O(events).

use vmxray_replay::Severity;

use crate::trace::Tier;

/// Events per bucket the loader sends.
pub const FINE_EVENTS: u64 = 1024;
/// Most buckets kept (their size doubles beyond).
pub const MAX_BUCKETS: usize = 8192;

/// Counts of one actor in one bucket.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ActorCounts {
    /// Events at each level: unknown, L1, L2, L0 exits (the [`Tier`] order of `slot`).
    pub tiers: [u32; 4],
    /// The worst anomaly's severity rank plus one (0: none).
    pub worst: u8,
}

impl ActorCounts {
    fn add(&mut self, other: &Self) {
        for (a, b) in self.tiers.iter_mut().zip(other.tiers) {
            *a = a.saturating_add(b);
        }
        self.worst = self.worst.max(other.worst);
    }

    /// The count of one level.
    pub fn count(&self, tier: Tier) -> u32 {
        self.tiers[slot(tier)]
    }

    /// The worst anomaly, if any.
    pub fn worst(&self) -> Option<Severity> {
        let rank = usize::from(self.worst.checked_sub(1)?);
        Severity::ALL.iter().copied().find(|s| s.rank() == rank)
    }
}

/// A tier's slot in [`ActorCounts::tiers`].
pub fn slot(tier: Tier) -> usize {
    match tier {
        Tier::Unknown => 0,
        Tier::L1 => 1,
        Tier::L2 => 2,
        Tier::L0Exit => 3,
    }
}

/// Consecutive events: where they start, how many, and per actor (by the trace's actor
/// number) what they were.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Bucket {
    /// Index of the first event.
    pub first: u64,
    /// Events.
    pub len: u64,
    /// Per actor number; shorter than the actor list when the last actors never appeared.
    pub actors: Vec<ActorCounts>,
}

impl Bucket {
    /// Counts one event of actor `actor` (None: no actor, a lost marker) at `tier`, with the
    /// worst anomaly it raised.
    #[inline]
    pub fn add(&mut self, actor: Option<u16>, tier: Tier, worst: Option<Severity>) {
        self.len += 1;
        let Some(a) = actor.map(usize::from) else { return };
        if self.actors.len() <= a {
            self.actors.resize(a + 1, ActorCounts::default());
        }
        let c = &mut self.actors[a];
        c.tiers[slot(tier)] += 1;
        if let Some(s) = worst {
            c.worst = c.worst.max(u8::try_from(s.rank() + 1).unwrap_or(u8::MAX));
        }
    }

    fn merge(&mut self, other: &Bucket) {
        self.len += other.len;
        if self.actors.len() < other.actors.len() {
            self.actors.resize(other.actors.len(), ActorCounts::default());
        }
        for (a, b) in self.actors.iter_mut().zip(&other.actors) {
            a.add(b);
        }
    }
}

/// The buckets of the whole trace so far.
#[derive(Clone, Debug, Default)]
pub struct Lanes {
    buckets: Vec<Bucket>,
    /// Fine buckets per bucket (a power of two).
    fine_per_bucket: u64,
    /// Fine buckets in the last bucket.
    fill: u64,
}

impl Lanes {
    /// Adds the next fine bucket.
    pub fn push(&mut self, fine: Bucket) {
        if self.fine_per_bucket == 0 {
            self.fine_per_bucket = 1;
        }
        match self.buckets.last_mut() {
            Some(last) if self.fill < self.fine_per_bucket => {
                last.merge(&fine);
                self.fill += 1;
            }
            _ => {
                self.buckets.push(fine);
                self.fill = 1;
            }
        }
        if self.buckets.len() > MAX_BUCKETS {
            // Halve the resolution: merge neighbours.
            let old = std::mem::take(&mut self.buckets);
            let mut it = old.into_iter();
            while let Some(mut a) = it.next() {
                if let Some(b) = it.next() {
                    a.merge(&b);
                }
                self.buckets.push(a);
            }
            self.fine_per_bucket *= 2;
            // The last bucket may be a lone (half-full) one.
            let last_fine = self
                .buckets
                .last()
                .map_or(0, |b| b.len.div_ceil(FINE_EVENTS).min(self.fine_per_bucket));
            self.fill = last_fine;
        }
    }

    /// Lanes from saved buckets of `fine_per_bucket` fine buckets each.
    pub fn from_buckets(buckets: Vec<Bucket>, fine_per_bucket: u64) -> Self {
        let fine_per_bucket = fine_per_bucket.max(1);
        let fill = buckets.last().map_or(0, |b| b.len.div_ceil(FINE_EVENTS).min(fine_per_bucket));
        Self { buckets, fine_per_bucket, fill }
    }

    /// Fine buckets per bucket.
    pub fn fine_per_bucket(&self) -> u64 {
        self.fine_per_bucket.max(1)
    }

    /// The buckets.
    pub fn buckets(&self) -> &[Bucket] {
        &self.buckets
    }

    /// What the events `from..to` were, per actor (the buckets they overlap).
    pub fn range(&self, from: u64, to: u64) -> Vec<ActorCounts> {
        let start = self.buckets.partition_point(|b| b.first + b.len <= from);
        let mut out: Vec<ActorCounts> = Vec::new();
        for b in self.buckets[start..].iter().take_while(|b| b.first < to) {
            if out.len() < b.actors.len() {
                out.resize(b.actors.len(), ActorCounts::default());
            }
            for (a, c) in out.iter_mut().zip(&b.actors) {
                a.add(c);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_stay_bounded_and_keep_every_count() {
        let mut lanes = Lanes::default();
        let n = MAX_BUCKETS as u64 * 5 + 3;
        for i in 0..n {
            let mut b = Bucket { first: i * FINE_EVENTS, ..Bucket::default() };
            for _ in 0..FINE_EVENTS {
                b.add(Some((i % 3) as u16), if i % 2 == 0 { Tier::L1 } else { Tier::L2 }, None);
            }
            if i == 777 {
                b.add(Some(0), Tier::L1, Some(Severity::Critical));
                b.len -= 1;
            }
            lanes.push(b);
        }
        assert!(lanes.buckets().len() <= MAX_BUCKETS);
        let total: u64 = lanes.buckets().iter().map(|b| b.len).sum();
        assert_eq!(total, n * FINE_EVENTS);
        let all = lanes.range(0, n * FINE_EVENTS);
        let events: u64 = all.iter().flat_map(|a| a.tiers).map(u64::from).sum();
        assert_eq!(events, n * FINE_EVENTS + 1);
        assert_eq!(all[0].worst(), Some(Severity::Critical));
        // Contiguous, in order.
        for w in lanes.buckets().windows(2) {
            assert_eq!(w[0].first + w[0].len, w[1].first);
        }
    }
}
