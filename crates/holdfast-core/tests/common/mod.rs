//! What the core's property tests share: how many cases, from which seed.

use proptest::test_runner::{Config, RngSeed};

/// The seed of the quick tier: the same cases every run, so `cargo test` is repeatable.
const QUICK_SEED: u64 = 0x686f_6c64_6661_7374;

/// A property's run: a quick, fixed-seed one by default (a few hundred cases); many more cases
/// from a fresh seed when `HOLDFAST_TESTS=full` (as `scripts/test`, and so CI, runs it). The
/// seed is printed either way; `PROPTEST_RNG_SEED=<seed>` replays a run exactly.
pub fn cases(quick: u32, full: u32) -> Config {
    let full_tier = std::env::var("HOLDFAST_TESTS").is_ok_and(|tier| tier == "full");
    let seed = std::env::var("PROPTEST_RNG_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| if full_tier { rand_seed() } else { QUICK_SEED });
    eprintln!("proptest seed {seed} (PROPTEST_RNG_SEED={seed} replays it)");
    Config {
        cases: if full_tier { full } else { quick },
        rng_seed: RngSeed::Fixed(seed),
        ..Config::default()
    }
}

fn rand_seed() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}
