//! Per-subscriber bookkeeping: which sequence numbers arrived, duplicates, reordering and
//! publications from a topic the subscriber never asked for.

use crate::frame::Delivery;

/// Sequence numbers above this are treated as garbage rather than grown into the bitmap.
const MAX_SEQ: u64 = 1 << 28;

/// What one subscriber saw.
#[derive(Debug, Clone, Default)]
pub(crate) struct Tracker {
    /// The topic index this subscriber is subscribed to.
    topic: u64,
    /// Bit `seq` is set once `seq` arrived.
    seen: Vec<u64>,
    /// Highest sequence number seen so far.
    max_seq: u64,
    /// Last server offset seen (Herald), which must only grow.
    last_offset: Option<u64>,
    /// Counts, for the report.
    pub(crate) counts: Counts,
}

/// Counters summed over subscribers for the report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    /// Publications received for the first time.
    pub(crate) unique: u64,
    /// Publications received again.
    pub(crate) duplicates: u64,
    /// Publications that arrived after a later one of the same topic: by server offset for
    /// Herald (the contract's order), by sequence number for nchan.
    pub(crate) reordered: u64,
    /// Publications of another topic, or with an impossible sequence number.
    pub(crate) misrouted: u64,
}

impl std::ops::AddAssign for Counts {
    fn add_assign(&mut self, other: Self) {
        self.unique += other.unique;
        self.duplicates += other.duplicates;
        self.reordered += other.reordered;
        self.misrouted += other.misrouted;
    }
}

/// What [`Tracker::record`] made of a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// First arrival: count it and its latency.
    New,
    /// Seen before, or not for this subscriber: counted, not timed.
    Rejected,
}

impl Tracker {
    /// A tracker for a subscriber of topic index `topic`.
    pub(crate) fn new(topic: u64) -> Self {
        Self {
            topic,
            ..Self::default()
        }
    }

    /// Records one delivery.
    pub(crate) fn record(&mut self, delivery: &Delivery) -> Verdict {
        if delivery.topic != self.topic || delivery.seq == 0 || delivery.seq > MAX_SEQ {
            self.counts.misrouted += 1;
            return Verdict::Rejected;
        }
        let (word, bit) = ((delivery.seq / 64) as usize, delivery.seq % 64);
        if word >= self.seen.len() {
            self.seen.resize(word + 1, 0);
        }
        if self.seen[word] & (1 << bit) != 0 {
            self.counts.duplicates += 1;
            return Verdict::Rejected;
        }
        self.seen[word] |= 1 << bit;
        self.counts.unique += 1;
        let late = match (delivery.offset, self.last_offset) {
            (Some(offset), Some(last)) => offset <= last,
            (Some(_), None) => false,
            (None, _) => delivery.seq < self.max_seq,
        };
        if late {
            self.counts.reordered += 1;
        }
        if let Some(offset) = delivery.offset {
            self.last_offset = Some(self.last_offset.map_or(offset, |last| last.max(offset)));
        }
        self.max_seq = self.max_seq.max(delivery.seq);
        Verdict::New
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(seq: u64, topic: u64, offset: Option<u64>) -> Delivery {
        Delivery {
            seq,
            topic,
            sent_ns: 0,
            offset,
        }
    }

    #[track_caller]
    fn check(arrivals: &[(u64, Option<u64>)], expected: Counts) {
        let mut tracker = Tracker::new(2);
        for &(seq, offset) in arrivals {
            tracker.record(&delivery(seq, 2, offset));
        }
        assert_eq!(tracker.counts, expected);
    }

    #[test]
    fn in_order_arrivals_are_all_new() {
        check(
            &[(1, Some(1)), (2, Some(2)), (3, Some(3))],
            Counts {
                unique: 3,
                ..Counts::default()
            },
        );
    }

    #[test]
    fn second_arrival_of_a_seq_is_a_duplicate() {
        check(
            &[(1, None), (2, None), (2, None), (1, None)],
            Counts {
                unique: 2,
                duplicates: 2,
                ..Counts::default()
            },
        );
    }

    #[test]
    fn nchan_order_is_judged_by_sequence_number() {
        check(
            &[(1, None), (3, None), (2, None), (4, None)],
            Counts {
                unique: 4,
                reordered: 1,
                ..Counts::default()
            },
        );
    }

    #[test]
    fn herald_order_is_judged_by_offset_not_sequence_number() {
        // A publisher retry can give seq 2 a later offset than seq 3: that is not the
        // server's reordering.
        check(
            &[(1, Some(10)), (3, Some(11)), (2, Some(12))],
            Counts {
                unique: 3,
                ..Counts::default()
            },
        );
        check(
            &[(1, Some(10)), (3, Some(12)), (2, Some(11))],
            Counts {
                unique: 3,
                reordered: 1,
                ..Counts::default()
            },
        );
    }

    #[test]
    fn other_topics_and_garbage_seqs_are_misrouted() {
        let mut tracker = Tracker::new(2);
        assert_eq!(tracker.record(&delivery(1, 5, None)), Verdict::Rejected);
        assert_eq!(tracker.record(&delivery(0, 2, None)), Verdict::Rejected);
        assert_eq!(
            tracker.record(&delivery(u64::MAX, 2, None)),
            Verdict::Rejected
        );
        assert_eq!(tracker.counts.misrouted, 3);
        assert_eq!(tracker.record(&delivery(1, 2, None)), Verdict::New);
    }

    #[test]
    fn unique_count_matches_a_set_model() {
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut tracker = Tracker::new(0);
        let mut model = std::collections::BTreeSet::new();
        let mut dups = 0;
        for _ in 0..5_000 {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1);
            let seq = (state >> 33) % 700 + 1;
            if !model.insert(seq) {
                dups += 1;
            }
            tracker.record(&delivery(seq, 0, None));
        }
        assert_eq!(tracker.counts.unique, model.len() as u64);
        assert_eq!(tracker.counts.duplicates, dups);
    }
}
