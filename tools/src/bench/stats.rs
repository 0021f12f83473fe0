//! Summary statistics of repeated measurements, as llama-bench reports them:
//! mean ± sample standard deviation over repetitions, and percentiles of
//! per-token latencies.

/// Arithmetic mean; 0 for no samples.
pub fn mean(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        return 0.0;
    }
    xs.iter().sum::<f64>() / xs.len() as f64
}

/// Sample standard deviation (n - 1 in the denominator, as llama-bench); 0
/// for fewer than two samples, where spread is unknown rather than zero.
pub fn sample_sd(xs: &[f64]) -> f64 {
    if xs.len() < 2 {
        return 0.0;
    }
    let m = mean(xs);
    let ss: f64 = xs.iter().map(|x| (x - m) * (x - m)).sum();
    (ss / (xs.len() - 1) as f64).sqrt()
}

/// The `q`-th percentile (0..=100) by linear interpolation between the
/// closest ranks (numpy's default, and what benches/llama_cpp_bench.py uses,
/// so both sides of a comparison agree). 0 for no samples.
pub fn percentile(xs: &[f64], q: f64) -> f64 {
    if xs.is_empty() {
        return 0.0;
    }
    let mut s = xs.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let pos = (s.len() - 1) as f64 * q.clamp(0.0, 100.0) / 100.0;
    let lo = pos.floor() as usize;
    let hi = (lo + 1).min(s.len() - 1);
    s[lo] + (s[hi] - s[lo]) * (pos - lo as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-9 * b.abs().max(1.0)
    }

    #[test]
    fn mean_and_sample_sd_of_known_data() {
        let xs = [2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0];
        assert!(close(mean(&xs), 5.0));
        // Population sd is 2; the sample sd is sqrt(32 / 7).
        assert!(close(sample_sd(&xs), (32.0f64 / 7.0).sqrt()));
        assert_eq!(sample_sd(&[3.0]), 0.0);
        assert_eq!(mean(&[]), 0.0);
    }

    #[test]
    fn percentiles_interpolate_between_ranks() {
        let xs: Vec<f64> = (1..=10).map(f64::from).collect();
        assert!(close(percentile(&xs, 50.0), 5.5));
        assert!(close(percentile(&xs, 90.0), 9.1));
        assert!(close(percentile(&xs, 99.0), 9.91));
        assert!(close(percentile(&xs, 0.0), 1.0));
        assert!(close(percentile(&xs, 100.0), 10.0));
        // Order of the input does not matter.
        let rev: Vec<f64> = xs.iter().rev().copied().collect();
        assert!(close(percentile(&rev, 90.0), 9.1));
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
    }
}
