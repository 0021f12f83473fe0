//! What the benchmark ran on: CPU model, the SIMD flags that matter to the
//! kernels, core counts; and a quick read-bandwidth probe, the ceiling a
//! memory-bound decode step can reach.

use serde::{Deserialize, Serialize};
use std::time::Instant;

/// CPU flags relevant to quantized matmul kernels, as /proc/cpuinfo spells
/// them (x86-64 "flags", aarch64 "Features").
const X86_FLAGS: &[&str] = &[
    "avx2",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx_vnni",
    "f16c",
    "fma",
];
const AARCH64_FLAGS: &[&str] = &[
    "asimd", "asimdhp", "asimddp", "i8mm", "sve", "sve2", "bf16", "fphp",
];

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    pub cpu: String,
    pub arch: String,
    pub logical_cores: usize,
    /// Distinct (physical id, core id) pairs, when /proc/cpuinfo says.
    pub physical_cores: Option<usize>,
    pub flags: Vec<String>,
}

impl Machine {
    pub fn detect() -> Machine {
        let text = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let logical = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        parse_cpuinfo(&text, std::env::consts::ARCH, logical)
    }

    /// "AMD EPYC, x86_64, 2 cores (2 logical), avx2 f16c fma"
    pub fn one_line(&self) -> String {
        let cores = match self.physical_cores {
            Some(p) => format!("{p} cores ({} logical)", self.logical_cores),
            None => format!("{} logical cores", self.logical_cores),
        };
        let flags = if self.flags.is_empty() {
            "no SIMD flags of note".to_string()
        } else {
            self.flags.join(" ")
        };
        format!("{}, {}, {cores}, {flags}", self.cpu, self.arch)
    }
}

/// Reads the model name, flags and core topology out of /proc/cpuinfo text.
pub fn parse_cpuinfo(text: &str, arch: &str, logical_cores: usize) -> Machine {
    let field = |key: &str| {
        text.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == key).then(|| v.trim().to_string())
        })
    };
    let cpu = field("model name")
        .or_else(|| field("Hardware"))
        .or_else(|| field("CPU part").map(|p| format!("CPU part {p}")))
        .unwrap_or_else(|| "unknown CPU".to_string());
    let (wanted, key) = if arch == "aarch64" {
        (AARCH64_FLAGS, "Features")
    } else {
        (X86_FLAGS, "flags")
    };
    let present: Vec<String> = field(key)
        .map(|f| f.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default();
    let flags = wanted
        .iter()
        .filter(|w| present.iter().any(|p| p == *w))
        .map(|w| w.to_string())
        .collect();

    let mut cores = std::collections::BTreeSet::new();
    let mut physical = None;
    for block in text.split("\n\n") {
        let get = |key: &str| {
            block.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim() == key).then(|| v.trim().to_string())
            })
        };
        if let (Some(p), Some(c)) = (get("physical id"), get("core id")) {
            cores.insert((p, c));
        }
    }
    if !cores.is_empty() {
        physical = Some(cores.len());
    }
    Machine {
        cpu,
        arch: arch.to_string(),
        logical_cores,
        physical_cores: physical,
        flags,
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BandwidthProbe {
    pub gb_per_s: f64,
    pub buffer_bytes: usize,
    pub threads: usize,
}

/// Best-of-`runs` read bandwidth over a buffer of `bytes` (rounded up to 8),
/// all `threads` reading disjoint slices. A buffer the size of the weights
/// sees the same cache level the weights do, so weights-bytes × tokens/s
/// over this figure is the share of the machine's limit a decode reaches.
pub fn probe_read_bandwidth(bytes: usize, threads: usize, runs: usize) -> BandwidthProbe {
    let words = bytes.div_ceil(8).max(1024);
    let threads = threads.max(1);
    // Distinct values on every page, so no page is shared zero memory.
    let buf: Vec<u64> = (0..words as u64).collect();
    let chunk = words.div_ceil(threads);
    let mut best = f64::INFINITY;
    for _ in 0..runs.max(1) {
        let t0 = Instant::now();
        let total: u64 = std::thread::scope(|s| {
            let handles: Vec<_> = buf
                .chunks(chunk)
                .map(|part| s.spawn(move || sum_words(part)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or(0))
                .fold(0, u64::wrapping_add)
        });
        std::hint::black_box(total);
        best = best.min(t0.elapsed().as_secs_f64());
    }
    BandwidthProbe {
        gb_per_s: (words * 8) as f64 / best / 1e9,
        buffer_bytes: words * 8,
        threads,
    }
}

/// Four independent accumulators so the adds do not serialize on one
/// register and the loop is bound by loads, not by add latency.
fn sum_words(xs: &[u64]) -> u64 {
    let mut acc = [0u64; 4];
    let mut it = xs.chunks_exact(4);
    for c in &mut it {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a = a.wrapping_add(x);
        }
    }
    let tail = it.remainder().iter().fold(0u64, |a, &x| a.wrapping_add(x));
    acc.iter().fold(tail, |a, &x| a.wrapping_add(x))
}

/// Peak resident set size of this process (VmHWM), in bytes.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_vm_hwm(&status)
}

fn parse_vm_hwm(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Resets VmHWM to the current RSS (Linux >= 4.0), so the peak of each
/// backend is its own and not the previous one's. Best effort: elsewhere the
/// peak is the process's.
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

#[cfg(test)]
mod tests {
    use super::*;

    const X86: &str = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 9R14\n\
physical id\t: 0\ncore id\t: 0\nflags\t\t: fpu sse2 avx2 fma f16c avx512f avx512bw amx_tile\n\n\
processor\t: 1\nmodel name\t: AMD EPYC 9R14\nphysical id\t: 0\ncore id\t: 1\n\
flags\t\t: fpu sse2 avx2 fma f16c avx512f avx512bw amx_tile\n\n\
processor\t: 2\nmodel name\t: AMD EPYC 9R14\nphysical id\t: 0\ncore id\t: 1\n\
flags\t\t: fpu sse2 avx2 fma f16c avx512f avx512bw amx_tile\n";

    #[test]
    fn cpuinfo_gives_model_flags_and_cores() {
        let m = parse_cpuinfo(X86, "x86_64", 3);
        assert_eq!(m.cpu, "AMD EPYC 9R14");
        assert_eq!(m.flags, ["avx2", "avx512f", "avx512bw", "f16c", "fma"]);
        assert_eq!(m.physical_cores, Some(2), "two SMT siblings share core 1");
        assert_eq!(m.logical_cores, 3);
        assert!(m.one_line().contains("2 cores (3 logical)"));
    }

    #[test]
    fn aarch64_features_are_read() {
        let text = "processor\t: 0\nFeatures\t: fp asimd asimddp i8mm sve\nCPU part\t: 0xd4f\n";
        let m = parse_cpuinfo(text, "aarch64", 1);
        assert_eq!(m.flags, ["asimd", "asimddp", "i8mm", "sve"]);
        assert_eq!(m.cpu, "CPU part 0xd4f");
        assert_eq!(m.physical_cores, None);
    }

    #[test]
    fn vm_hwm_is_parsed_in_bytes() {
        assert_eq!(
            parse_vm_hwm("VmPeak:\t 100 kB\nVmHWM:\t   2048 kB\n"),
            Some(2048 * 1024)
        );
        assert_eq!(parse_vm_hwm("VmPeak: 1 kB\n"), None);
    }

    #[test]
    fn bandwidth_probe_reads_the_whole_buffer() {
        assert_eq!(sum_words(&[1, 2, 3, 4, 5, 6, 7]), 28);
        let p = probe_read_bandwidth(1 << 20, 2, 2);
        assert_eq!(p.buffer_bytes, 1 << 20);
        assert!(p.gb_per_s > 0.0 && p.gb_per_s.is_finite());
    }
}
