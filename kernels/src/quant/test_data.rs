//! Deterministic test inputs shared by the kernel tests.

use rand::{Rng, SeedableRng};

/// `n` floats, mostly N(0,1)-like with occasional outliers, seeded.
pub fn random_row(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x0005_0770_u64);
    (0..n)
        .map(|_| {
            let v: f32 = rng.gen_range(-1.0..1.0) + rng.gen_range(-1.0..1.0);
            if rng.gen_ratio(1, 50) {
                v * 8.0
            } else {
                v
            }
        })
        .collect()
}
