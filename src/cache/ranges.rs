//! A set of byte ranges: which parts of a sparse cache file hold real data.

use serde::{Deserialize, Serialize};

/// Sorted, non-overlapping, non-adjacent half-open ranges `[start, end)`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeSet {
    ranges: Vec<(u64, u64)>,
}

impl RangeSet {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        let (mut s, mut e) = (start, end);
        let mut out = Vec::with_capacity(self.ranges.len() + 1);
        let mut placed = false;
        for &(rs, re) in &self.ranges {
            if re < s {
                out.push((rs, re));
            } else if rs > e {
                if !placed {
                    out.push((s, e));
                    placed = true;
                }
                out.push((rs, re));
            } else {
                s = s.min(rs);
                e = e.max(re);
            }
        }
        if !placed {
            out.push((s, e));
        }
        self.ranges = out;
    }

    pub fn remove(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        let mut out = Vec::with_capacity(self.ranges.len() + 1);
        for &(rs, re) in &self.ranges {
            if re <= start || rs >= end {
                out.push((rs, re));
                continue;
            }
            if rs < start {
                out.push((rs, start));
            }
            if re > end {
                out.push((end, re));
            }
        }
        self.ranges = out;
    }

    /// Drop everything at or beyond `len`.
    pub fn truncate(&mut self, len: u64) {
        self.remove(len, u64::MAX);
    }

    pub fn contains(&self, start: u64, end: u64) -> bool {
        if start >= end {
            return true;
        }
        self.ranges.iter().any(|&(rs, re)| rs <= start && re >= end)
    }

    /// The parts of `[start, end)` not in the set.
    pub fn missing(&self, start: u64, end: u64) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let mut pos = start;
        for &(rs, re) in &self.ranges {
            if re <= pos {
                continue;
            }
            if rs >= end {
                break;
            }
            if rs > pos {
                out.push((pos, rs.min(end)));
            }
            pos = pos.max(re);
            if pos >= end {
                break;
            }
        }
        if pos < end {
            out.push((pos, end));
        }
        out
    }

    pub fn total(&self) -> u64 {
        self.ranges.iter().map(|(s, e)| e - s).sum()
    }

    /// Bytes of the set that fall inside `[start, end)`.
    pub fn overlap(&self, start: u64, end: u64) -> u64 {
        self.ranges
            .iter()
            .map(|&(rs, re)| re.min(end).saturating_sub(rs.max(start)))
            .sum()
    }

    pub fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.ranges.iter().copied()
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn insert_merges_and_missing_reports_gaps() {
        let mut r = RangeSet::new();
        r.insert(10, 20);
        r.insert(30, 40);
        r.insert(20, 25);
        assert_eq!(r.iter().collect::<Vec<_>>(), vec![(10, 25), (30, 40)]);
        assert_eq!(r.missing(0, 50), vec![(0, 10), (25, 30), (40, 50)]);
        assert!(r.contains(12, 25));
        assert!(!r.contains(12, 26));
        r.remove(15, 35);
        assert_eq!(r.iter().collect::<Vec<_>>(), vec![(10, 15), (35, 40)]);
        assert_eq!(r.total(), 10);
    }

    proptest! {
        #[test]
        fn behaves_like_a_bitmap(ops in proptest::collection::vec((any::<bool>(), 0u64..200, 0u64..60), 1..40)) {
            let mut set = RangeSet::new();
            let mut bits = vec![false; 300];
            for (add, start, len) in ops {
                let end = start + len;
                if add { set.insert(start, end) } else { set.remove(start, end) }
                for b in &mut bits[start as usize..end as usize] { *b = add; }
            }
            let total = bits.iter().filter(|b| **b).count() as u64;
            prop_assert_eq!(set.total(), total);
            let missing: u64 = set.missing(0, 300).iter().map(|(s, e)| e - s).sum();
            prop_assert_eq!(missing, 300 - total);
            for (i, b) in bits.iter().enumerate() {
                prop_assert_eq!(set.contains(i as u64, i as u64 + 1), *b);
            }
        }
    }
}
