//! A small random number generator for plugins that spread load or jitter delays.
//!
//! SplitMix64: tiny, fast and good enough to decorrelate choices; not for secrets. The seed
//! comes from the standard library's per-process hash keys, which the sandbox fills from the
//! host's randomness, so two instances (or two replicas of the host) do not march in step.

use std::cell::Cell;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};

/// A random number generator usable through `&self`, so a plugin can keep one in its instance.
#[derive(Debug)]
pub struct Rng {
    state: Cell<u64>,
}

impl Rng {
    /// A generator that gives the same numbers for the same seed (for tests).
    pub fn seeded(seed: u64) -> Self {
        Rng {
            state: Cell::new(seed),
        }
    }

    /// A generator seeded from the host's randomness.
    pub fn from_entropy() -> Self {
        Rng::seeded(RandomState::new().build_hasher().finish())
    }

    pub fn next_u64(&self) -> u64 {
        let state = self.state.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
        self.state.set(state);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n` > 0), without the bias of a plain modulo.
    pub fn below(&self, n: u64) -> u64 {
        assert!(n > 0, "Rng::below(0)");
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

impl Default for Rng {
    fn default() -> Self {
        Rng::from_entropy()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_numbers() {
        let (a, b) = (Rng::seeded(7), Rng::seeded(7));
        assert_eq!(
            (0..4).map(|_| a.next_u64()).collect::<Vec<_>>(),
            (0..4).map(|_| b.next_u64()).collect::<Vec<_>>()
        );
    }

    #[test]
    fn below_stays_in_range_and_reaches_every_value() {
        let rng = Rng::seeded(1);
        let mut seen = [false; 5];
        for _ in 0..200 {
            let n = rng.below(5);
            assert!(n < 5);
            seen[n as usize] = true;
        }
        assert!(seen.iter().all(|&s| s));
    }
}
