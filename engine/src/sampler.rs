//! Turning logits into the next token. The chain is llama.cpp's order:
//! repetition penalty → top-k → top-p → min-p → temperature → draw. A
//! temperature of 0 is greedy (argmax after the penalty). The RNG is a seeded
//! ChaCha so a run is reproducible from its seed.

use crate::error::{Error, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

/// How the next token is picked from the logits (llama.cpp's sampler
/// chain: penalty, top-k, top-p, min-p, temperature).
#[derive(Clone, Debug, PartialEq)]
pub struct SamplerConfig {
    /// 0 = greedy.
    pub temperature: f32,
    /// 0 = disabled.
    pub top_k: usize,
    /// 1.0 = disabled.
    pub top_p: f32,
    /// 0.0 = disabled.
    pub min_p: f32,
    /// 1.0 = disabled.
    pub repeat_penalty: f32,
    /// How many recent tokens the penalty looks at.
    pub repeat_last_n: usize,
    /// Seed of the random generator: the same seed, prompt and model give
    /// the same answer.
    pub seed: u64,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        Self {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            seed: 0x5077_0000,
        }
    }
}

impl SamplerConfig {
    /// Always the most likely token (temperature 0).
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            ..Self::default()
        }
    }

    /// [`Error::InvalidSampling`] naming the first out-of-range field.
    pub fn validate(&self) -> Result<()> {
        let bad = |name, reason: &str| {
            Err(Error::InvalidSampling {
                name,
                reason: reason.to_string(),
            })
        };
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return bad("temperature", "must be finite and >= 0");
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p", "must be in (0, 1]");
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad("min_p", "must be in [0, 1]");
        }
        if !self.repeat_penalty.is_finite() || self.repeat_penalty <= 0.0 {
            return bad("repeat_penalty", "must be finite and > 0");
        }
        Ok(())
    }
}

/// A [`SamplerConfig`] with its seeded random generator.
#[derive(Debug)]
pub struct Sampler {
    cfg: SamplerConfig,
    rng: ChaCha20Rng,
    /// Scratch: (token, logit) candidates, reused across steps.
    cand: Vec<(u32, f32)>,
}

impl Sampler {
    /// A sampler for a valid `cfg` ([`SamplerConfig::validate`]).
    pub fn new(cfg: SamplerConfig) -> Result<Self> {
        cfg.validate()?;
        let rng = ChaCha20Rng::seed_from_u64(cfg.seed);
        Ok(Self {
            cfg,
            rng,
            cand: Vec::new(),
        })
    }

    /// Its configuration.
    pub fn config(&self) -> &SamplerConfig {
        &self.cfg
    }

    /// Picks the next token. `recent` are the tokens seen so far (prompt and
    /// generated); only the last `repeat_last_n` are penalized.
    pub fn sample(&mut self, logits: &[f32], recent: &[u32]) -> Result<u32> {
        if logits.is_empty() {
            return Err(Error::Empty("logits"));
        }
        let cfg = &self.cfg;
        self.cand.clear();
        self.cand
            .extend(logits.iter().enumerate().map(|(i, &l)| (i as u32, l)));
        if cfg.repeat_penalty != 1.0 && cfg.repeat_last_n > 0 {
            let start = recent.len().saturating_sub(cfg.repeat_last_n);
            let mut seen = std::collections::HashSet::new();
            for &t in &recent[start..] {
                if seen.insert(t) {
                    if let Some(c) = self.cand.get_mut(t as usize) {
                        c.1 = if c.1 > 0.0 {
                            c.1 / cfg.repeat_penalty
                        } else {
                            c.1 * cfg.repeat_penalty
                        };
                    }
                }
            }
        }
        if cfg.temperature <= 0.0 {
            return Ok(argmax_pairs(&self.cand));
        }
        // Sort descending once; the truncations below then take prefixes.
        let by_logit = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1);
        if cfg.top_k > 0 && cfg.top_k < self.cand.len() {
            self.cand.select_nth_unstable_by(cfg.top_k - 1, by_logit);
            self.cand.truncate(cfg.top_k);
        }
        self.cand.sort_unstable_by(by_logit);
        // Softmax at temperature 1 for top-p / min-p (as llama.cpp does before
        // applying temperature).
        let probs = softmax_of(&self.cand, 1.0);
        let mut keep = self.cand.len();
        if cfg.top_p < 1.0 {
            let mut cum = 0.0;
            for (i, p) in probs.iter().enumerate() {
                cum += p;
                if cum >= cfg.top_p {
                    keep = i + 1;
                    break;
                }
            }
        }
        if cfg.min_p > 0.0 {
            let floor = probs[0] * cfg.min_p;
            let n = probs.iter().take_while(|&&p| p >= floor).count().max(1);
            keep = keep.min(n);
        }
        self.cand.truncate(keep.max(1));
        let probs = softmax_of(&self.cand, cfg.temperature);
        let r: f32 = self.rng.gen();
        let mut cum = 0.0;
        for (i, p) in probs.iter().enumerate() {
            cum += p;
            if r < cum {
                return Ok(self.cand[i].0);
            }
        }
        Ok(self.cand[self.cand.len() - 1].0)
    }
}

/// Index of the largest logit (first one on ties, like llama.cpp's greedy).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

fn argmax_pairs(c: &[(u32, f32)]) -> u32 {
    let mut best = 0;
    for (i, x) in c.iter().enumerate() {
        if x.1 > c[best].1 {
            best = i;
        }
    }
    c[best].0
}

fn softmax_of(c: &[(u32, f32)], temperature: f32) -> Vec<f32> {
    let max = c.iter().map(|x| x.1).fold(f32::NEG_INFINITY, f32::max);
    let mut p: Vec<f32> = c
        .iter()
        .map(|x| ((x.1 - max) / temperature).exp())
        .collect();
    let sum: f32 = p.iter().sum();
    for x in &mut p {
        *x /= sum;
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits() -> Vec<f32> {
        vec![1.0, 3.0, 2.5, -1.0, 0.5, 2.9]
    }

    #[test]
    fn greedy_is_argmax_and_penalty_can_change_it() {
        let mut s = Sampler::new(SamplerConfig::greedy()).unwrap();
        assert_eq!(s.sample(&logits(), &[]).unwrap(), 1);
        let cfg = SamplerConfig {
            repeat_penalty: 1.2,
            ..SamplerConfig::greedy()
        };
        let mut s = Sampler::new(cfg).unwrap();
        // 3.0 / 1.2 = 2.5 < 2.9: token 5 wins once token 1 was seen
        assert_eq!(s.sample(&logits(), &[1]).unwrap(), 5);
    }

    #[test]
    fn top_k_one_is_greedy_and_seed_reproduces() {
        let cfg = SamplerConfig {
            temperature: 1.0,
            top_k: 1,
            ..SamplerConfig::default()
        };
        let mut s = Sampler::new(cfg).unwrap();
        for _ in 0..20 {
            assert_eq!(s.sample(&logits(), &[]).unwrap(), 1);
        }
        let cfg = SamplerConfig {
            temperature: 1.5,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            seed: 7,
            ..SamplerConfig::default()
        };
        let a: Vec<u32> = {
            let mut s = Sampler::new(cfg.clone()).unwrap();
            (0..50).map(|_| s.sample(&logits(), &[]).unwrap()).collect()
        };
        let mut s = Sampler::new(cfg).unwrap();
        let b: Vec<u32> = (0..50).map(|_| s.sample(&logits(), &[]).unwrap()).collect();
        assert_eq!(a, b);
        let distinct: std::collections::HashSet<_> = a.iter().collect();
        assert!(
            distinct.len() >= 3,
            "temperature sampling explores: {distinct:?}"
        );
    }

    #[test]
    fn top_p_and_min_p_truncate() {
        // probabilities at T=1 for [10, 9, 0, 0]: ~0.731, 0.269, tiny, tiny
        let l = [10.0, 9.0, 0.0, 0.0];
        let cfg = SamplerConfig {
            temperature: 1.0,
            top_k: 0,
            top_p: 0.5,
            min_p: 0.0,
            ..SamplerConfig::default()
        };
        let mut s = Sampler::new(cfg).unwrap();
        assert!((0..50).all(|_| s.sample(&l, &[]).unwrap() == 0));
        let cfg = SamplerConfig {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.2,
            ..SamplerConfig::default()
        };
        let mut s = Sampler::new(cfg).unwrap();
        let got: std::collections::HashSet<_> =
            (0..200).map(|_| s.sample(&l, &[]).unwrap()).collect();
        assert!(got.iter().all(|&t| t <= 1) && got.len() == 2, "{got:?}");
    }

    #[test]
    fn invalid_parameters_are_typed_errors() {
        for cfg in [
            SamplerConfig {
                temperature: -1.0,
                ..SamplerConfig::default()
            },
            SamplerConfig {
                top_p: 0.0,
                ..SamplerConfig::default()
            },
            SamplerConfig {
                min_p: 2.0,
                ..SamplerConfig::default()
            },
            SamplerConfig {
                repeat_penalty: f32::NAN,
                ..SamplerConfig::default()
            },
        ] {
            assert!(matches!(
                Sampler::new(cfg),
                Err(Error::InvalidSampling { .. })
            ));
        }
        let mut s = Sampler::new(SamplerConfig::greedy()).unwrap();
        assert!(s.sample(&[], &[]).is_err());
    }
}
