//! Target selection: smooth weighted round robin, least connections and a consistent-hash
//! ring.
//!
//! Every picker takes an `eligible` predicate, so the caller decides which targets may be chosen
//! (healthy, circuit not open, not already tried by this request) and the pickers stay free of
//! health logic.
//!
//! Consistent hashing uses a hash ring with virtual nodes, in the style of Ketama, rather than
//! Maglev. Both move about 1/N of the keys when one of N targets goes away. The ring also gives a
//! stable fallback at no cost. When a key's target is ineligible, the walk continues clockwise
//! to the next distinct target. So the key moves to the same neighbour on every request, and it
//! returns when its target does. Maglev would need its lookup table rebuilt on every health change to do
//! the same. The ring costs O(log n) per lookup against Maglev's O(1), which is negligible at the
//! sizes a service has (at most [`MAX_RING_POINTS`] points).

/// Points on the ring per unit of weight.
pub const POINTS_PER_WEIGHT: usize = 160;

/// Upper bound on ring points, so a service with many heavy targets keeps a small ring. Weights
/// still apply proportionally below it.
pub const MAX_RING_POINTS: usize = 64 * 1024;

/// Smooth weighted round robin as nginx implements it (`ngx_http_upstream_get_peer`): each pick
/// adds every eligible target's weight to its running score, picks the highest score and
/// subtracts the total weight from it. Weights 5, 1, 1 give `a a b a c a a` instead of five `a`
/// in a row, and equal weights give plain round robin.
#[derive(Debug, Clone, Default)]
pub struct SmoothWeighted {
    current: Vec<i64>,
}

impl SmoothWeighted {
    pub fn new(targets: usize) -> Self {
        SmoothWeighted {
            current: vec![0; targets],
        }
    }

    /// Picks a target among those for which `eligible` is true, or `None` when there is none.
    pub fn pick(&mut self, weights: &[u32], eligible: impl Fn(usize) -> bool) -> Option<usize> {
        if self.current.len() != weights.len() {
            self.current = vec![0; weights.len()];
        }
        let mut total = 0i64;
        let mut best: Option<usize> = None;
        for (index, weight) in weights.iter().enumerate() {
            if !eligible(index) {
                continue;
            }
            let weight = i64::from(*weight);
            self.current[index] += weight;
            total += weight;
            if best.is_none_or(|best| self.current[index] > self.current[best]) {
                best = Some(index);
            }
        }
        let best = best?;
        self.current[best] -= total;
        Some(best)
    }
}

/// Picks the eligible target with the fewest requests in flight relative to its weight, that is
/// the lowest `(in_flight + 1) / weight`. Ties go to the first tied target at or after `start`,
/// so a caller that rotates `start` spreads requests evenly while loads are equal.
pub fn least_connections(
    in_flight: &[u64],
    weights: &[u32],
    start: usize,
    eligible: impl Fn(usize) -> bool,
) -> Option<usize> {
    let count = in_flight.len().min(weights.len());
    if count == 0 {
        return None;
    }
    let mut best: Option<usize> = None;
    for offset in 0..count {
        let index = (start % count + offset) % count;
        if !eligible(index) {
            continue;
        }
        let better = match best {
            None => true,
            // a/wa < b/wb  <=>  a*wb < b*wa, in integers so that equal loads tie exactly.
            Some(best) => {
                u128::from(in_flight[index] + 1) * u128::from(weights[best])
                    < u128::from(in_flight[best] + 1) * u128::from(weights[index])
            }
        };
        if better {
            best = Some(index);
        }
    }
    best
}

/// A consistent-hash ring over targets named by stable strings (their URLs).
#[derive(Debug, Clone)]
pub struct HashRing {
    /// Points sorted by hash: (position, target index).
    points: Vec<(u64, usize)>,
    targets: usize,
}

impl HashRing {
    /// Builds the ring. A target's points depend only on its name and weight, so adding or
    /// removing one target leaves every other target's points where they were.
    pub fn new(targets: &[(&str, u32)]) -> Self {
        let total_weight: usize = targets.iter().map(|(_, weight)| *weight as usize).sum();
        let per_weight = if total_weight * POINTS_PER_WEIGHT > MAX_RING_POINTS {
            (MAX_RING_POINTS / total_weight.max(1)).max(1)
        } else {
            POINTS_PER_WEIGHT
        };
        let mut points = Vec::with_capacity(total_weight * per_weight);
        for (index, (name, weight)) in targets.iter().enumerate() {
            for replica in 0..(*weight as usize * per_weight) {
                points.push((hash_key(format!("{name}#{replica}").as_bytes()), index));
            }
        }
        points.sort_unstable();
        HashRing {
            points,
            targets: targets.len(),
        }
    }

    /// Returns the first eligible target clockwise from `hash`, or `None` when no target is
    /// eligible.
    pub fn pick(&self, hash: u64, eligible: impl Fn(usize) -> bool) -> Option<usize> {
        if self.points.is_empty() {
            return None;
        }
        let start = self.points.partition_point(|(point, _)| *point < hash);
        let mut seen = vec![false; self.targets];
        let mut distinct = 0;
        for offset in 0..self.points.len() {
            let (_, index) = self.points[(start + offset) % self.points.len()];
            if seen[index] {
                continue;
            }
            if eligible(index) {
                return Some(index);
            }
            seen[index] = true;
            distinct += 1;
            if distinct == self.targets {
                break;
            }
        }
        None
    }
}

/// Hashes a key to a ring position: 64-bit FNV-1a, then the MurmurHash3 finaliser, because
/// FNV alone spreads short, similar keys (`10.0.0.1`, `10.0.0.2`) poorly over the high bits.
/// The function is fixed here so that positions do not change between builds or releases.
pub fn hash_key(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    hash ^ (hash >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sequence(weights: &[u32], picks: usize) -> Vec<usize> {
        let mut balancer = SmoothWeighted::new(weights.len());
        (0..picks)
            .map(|_| balancer.pick(weights, |_| true).unwrap())
            .collect()
    }

    #[test]
    fn smooth_weighted_matches_nginx_sequence() {
        // The sequence nginx documents for weights 5, 1, 1.
        assert_eq!(sequence(&[5, 1, 1], 7), vec![0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn equal_weights_are_round_robin() {
        assert_eq!(sequence(&[1, 1, 1], 6), vec![0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn smooth_weighted_counts_follow_weights() {
        let picks = sequence(&[3, 2, 1], 600);
        let counts: Vec<usize> = (0..3)
            .map(|target| picks.iter().filter(|&&pick| pick == target).count())
            .collect();
        assert_eq!(counts, vec![300, 200, 100]);
    }

    #[test]
    fn smooth_weighted_skips_ineligible() {
        let mut balancer = SmoothWeighted::new(3);
        for _ in 0..10 {
            let pick = balancer.pick(&[1, 1, 1], |index| index != 1).unwrap();
            assert_ne!(pick, 1);
        }
        assert_eq!(balancer.pick(&[1, 1, 1], |_| false), None);
    }

    #[test]
    fn least_connections_prefers_idle_target() {
        assert_eq!(
            least_connections(&[3, 0, 2], &[1, 1, 1], 0, |_| true),
            Some(1)
        );
        // Target 0 has twice the weight, so 3 in flight there equals 1 on target 1.
        assert_eq!(least_connections(&[3, 1], &[2, 1], 1, |_| true), Some(1));
        assert_eq!(least_connections(&[3, 1], &[4, 1], 1, |_| true), Some(0));
        assert_eq!(
            least_connections(&[0, 5], &[1, 1], 0, |index| index == 1),
            Some(1)
        );
        assert_eq!(least_connections(&[0, 5], &[1, 1], 0, |_| false), None);
    }

    #[test]
    fn least_connections_ties_rotate() {
        let picks: Vec<usize> = (0..4)
            .map(|start| least_connections(&[0, 0, 0], &[1, 1, 1], start, |_| true).unwrap())
            .collect();
        assert_eq!(picks, vec![0, 1, 2, 0]);
    }

    fn names(count: usize) -> Vec<String> {
        (0..count)
            .map(|i| format!("http://10.0.0.{i}:8080"))
            .collect()
    }

    fn ring(names: &[String]) -> HashRing {
        let targets: Vec<(&str, u32)> = names.iter().map(|name| (name.as_str(), 1)).collect();
        HashRing::new(&targets)
    }

    #[test]
    fn hash_ring_keeps_key_on_one_target() {
        let names = names(4);
        let ring = ring(&names);
        for key in ["alice", "bob", "10.1.2.3"] {
            let hash = hash_key(key.as_bytes());
            let first = ring.pick(hash, |_| true).unwrap();
            for _ in 0..100 {
                assert_eq!(ring.pick(hash, |_| true), Some(first));
            }
        }
    }

    #[test]
    fn hash_ring_spreads_keys() {
        let names = names(4);
        let ring = ring(&names);
        let mut counts = [0usize; 4];
        for key in 0..10_000 {
            let hash = hash_key(format!("client-{key}").as_bytes());
            counts[ring.pick(hash, |_| true).unwrap()] += 1;
        }
        for count in counts {
            assert!(
                (1_800..=3_200).contains(&count),
                "uneven spread: {counts:?}"
            );
        }
    }

    #[test]
    fn removing_target_moves_only_its_keys() {
        let before_names = names(4);
        let before = ring(&before_names);
        // The ring without the third target, built from scratch as a reload would.
        let after_names: Vec<String> = before_names
            .iter()
            .enumerate()
            .filter(|(index, _)| *index != 2)
            .map(|(_, name)| name.clone())
            .collect();
        let after = ring(&after_names);
        let keys = 10_000;
        let mut moved = 0;
        for key in 0..keys {
            let hash = hash_key(format!("client-{key}").as_bytes());
            let old = &before_names[before.pick(hash, |_| true).unwrap()];
            let new = &after_names[after.pick(hash, |_| true).unwrap()];
            if old != new {
                assert_eq!(
                    old, &before_names[2],
                    "a key moved off a target that stayed"
                );
                moved += 1;
            }
        }
        let share = moved as f64 / keys as f64;
        assert!(
            (0.18..=0.32).contains(&share),
            "{share} of keys moved; expected about 1/4"
        );
    }

    #[test]
    fn ineligible_target_falls_to_stable_neighbour() {
        let names = names(4);
        let ring = ring(&names);
        let hash = hash_key(b"alice");
        let home = ring.pick(hash, |_| true).unwrap();
        let fallback = ring.pick(hash, |index| index != home).unwrap();
        assert_ne!(fallback, home);
        for _ in 0..10 {
            assert_eq!(ring.pick(hash, |index| index != home), Some(fallback));
        }
        assert_eq!(ring.pick(hash, |_| false), None);
    }

    #[test]
    fn ring_weights_scale_share() {
        let names = names(2);
        let ring = HashRing::new(&[(names[0].as_str(), 3), (names[1].as_str(), 1)]);
        let mut heavy = 0;
        for key in 0..10_000 {
            if ring.pick(hash_key(format!("k{key}").as_bytes()), |_| true) == Some(0) {
                heavy += 1;
            }
        }
        assert!((6_800..=8_200).contains(&heavy), "heavy target got {heavy}");
    }
}
