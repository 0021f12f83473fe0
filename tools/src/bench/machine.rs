//! What the benchmark ran on: CPU model, the SIMD flags that matter to the
//! kernels, core counts; a quick read-bandwidth probe, the ceiling a
//! memory-bound decode step can reach, and the integer dot step's peak,
//! the ceiling of a compute-bound prefill.

use serde::{Deserialize, Serialize};
use sotto_kernels::probe;
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

/// The names llama.cpp's system info gives this CPU's flags, lowercased as
/// benches/llama_cpp_bench.py joins them into its rows' `isa`.
const LLAMA_CPP_NAMES: &[(&str, &str)] = &[
    ("avx2", "avx2"),
    ("avx512f", "avx512"),
    ("avx512_vnni", "avx512_vnni"),
    ("avx_vnni", "avx_vnni"),
    ("f16c", "f16c"),
    ("fma", "fma"),
    ("asimddp", "dotprod"),
    ("i8mm", "matmul_int8"),
    ("sve", "sve"),
];

impl Machine {
    /// This CPU's flags that a llama.cpp build whose rows say `isa` was not
    /// built for (a portable or AVX2-only wheel on an AVX-512 machine): its
    /// rows then understate llama.cpp.
    pub fn flags_llama_cpp_lacks(&self, isa: &str) -> Vec<&'static str> {
        let built: Vec<&str> = isa.split('+').collect();
        LLAMA_CPP_NAMES
            .iter()
            .filter(|(ours, _)| self.flags.iter().any(|f| f == ours))
            .filter(|(_, theirs)| !built.contains(theirs))
            .map(|(_, theirs)| *theirs)
            .collect()
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
    /// Median over the repetitions.
    pub gb_per_s: f64,
    pub buffer_bytes: usize,
    pub threads: usize,
    /// What the buffer size stands for: `L3` (half the last-level cache),
    /// `weights` (the model's tensor bytes) or `DRAM` (many times the cache).
    #[serde(default)]
    pub what: String,
    /// The fastest repetition.
    #[serde(default)]
    pub best_gb_per_s: f64,
    /// 10th and 90th percentiles of the repetitions (GB/s).
    #[serde(default)]
    pub p10_gb_per_s: f64,
    #[serde(default)]
    pub p90_gb_per_s: f64,
    #[serde(default)]
    pub repetitions: usize,
    /// Each reading thread ran pinned to its own CPU.
    #[serde(default)]
    pub pinned: bool,
    /// The figure is the read with software prefetch
    /// (`sotto_kernels::probe::sum_words`), faster here than the
    /// plain one.
    #[serde(default)]
    pub prefetched: bool,
    /// Most of the buffer lay on 2 MiB pages ([`ProbeBuffer`]), as the
    /// mapped weights do where the OS gives them.
    #[serde(default)]
    pub huge_pages: bool,
}

/// The probe's words, asked for on 2 MiB pages (Linux's transparent huge
/// pages, `MADV_HUGEPAGE`): the weights' maps ask for them too
/// (`sotto_models::MappedFile`), and on 4 KiB pages a read pays a TLB miss
/// every 64 lines that the decode does not (under a hypervisor each is a
/// two-level page walk: on the dev machine, alternating in one process, a
/// plain 1-thread read of 288–1050 MiB gave 9.8–14.0 GB/s on 4 KiB pages
/// and 12.2–16.6 on 2 MiB ones). A plain vector where no map is had.
struct ProbeBuffer {
    mem: sotto_models::HugeAnon,
    huge_pages: bool,
}

impl ProbeBuffer {
    /// `words` words, each its own index, so no page is the shared zero page.
    fn new(words: usize) -> ProbeBuffer {
        let before = anon_huge_bytes();
        let mut buf = ProbeBuffer {
            mem: sotto_models::HugeAnon::new(words * 8),
            huge_pages: false,
        };
        for (i, w) in buf.words_mut().iter_mut().enumerate() {
            *w = i as u64;
        }
        buf.huge_pages = buf.mem.is_mapped()
            && match (before, anon_huge_bytes()) {
                (Some(b), Some(a)) => a.saturating_sub(b) >= (words * 8 / 2) as u64,
                _ => false,
            };
        buf
    }

    // a map is page-aligned and the fallback is words: the casts hold
    fn words(&self) -> &[u64] {
        bytemuck::try_cast_slice(self.mem.bytes()).unwrap_or(&[])
    }

    fn words_mut(&mut self) -> &mut [u64] {
        bytemuck::try_cast_slice_mut(self.mem.bytes_mut()).unwrap_or(&mut [])
    }
}

/// The process's anonymous memory on huge pages (`AnonHugePages` of
/// `/proc/self/smaps_rollup`), in bytes; `None` where the OS does not say.
fn anon_huge_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/smaps_rollup").ok()?;
    kib_field(&text, "AnonHugePages:")
}

/// The `key: N kB` line of a `/proc` file, in bytes.
fn kib_field(text: &str, key: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(key))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Timed repetitions last at least this long (a cache-resident buffer is
/// read several times per repetition).
const MIN_REPETITION_SECS: f64 = 0.02;
/// Repetitions stop once there are enough and they took this long...
const MIN_PROBE_SECS: f64 = 0.3;
/// ...or at this many.
const MAX_REPETITIONS: usize = 200;

/// Read bandwidth over a buffer of `bytes` (rounded up to 8, at least
/// 8 KiB): `threads` threads read disjoint slices ([`on_pinned_threads`]
/// times them), once plainly and once asking for lines ahead as the decode
/// kernels do; the faster read's median is the figure, best and
/// percentiles show its noise. A buffer the size of the weights sees the
/// same cache level the weights do, so weights-bytes × tokens/s over this
/// figure is the share of the machine's limit a decode reaches.
pub fn probe_read_bandwidth(bytes: usize, threads: usize, min_reps: usize) -> BandwidthProbe {
    let words = bytes.div_ceil(8).max(1024);
    let threads = threads.max(1);
    let buf = ProbeBuffer::new(words);
    let chunk = words.div_ceil(threads);
    let parts: Vec<&[u64]> = buf.words().chunks(chunk).collect();
    // never more than 1 GiB read per repetition
    let max_passes = ((1usize << 30) / (words * 8)).max(1);
    let read = |prefetched: bool| {
        on_pinned_threads(parts.len(), min_reps, max_passes, |i, passes| {
            let part = std::hint::black_box(parts[i]);
            let mut total = 0u64;
            for _ in 0..passes {
                let ahead = prefetched.then_some(probe::READ_PREFETCH_BYTES);
                total = total.wrapping_add(probe::sum_words(part, ahead));
            }
            std::hint::black_box(total);
            (part.len() * 8 * passes) as u64
        })
    };
    let (plain, ahead) = (read(false), read(true));
    let prefetched = ahead.quantile(0.5) > plain.quantile(0.5);
    let run = if prefetched { ahead } else { plain };
    let at = |q: f64| run.quantile(q) / 1e9;
    BandwidthProbe {
        gb_per_s: at(0.5),
        buffer_bytes: words * 8,
        threads,
        what: String::new(),
        best_gb_per_s: at(1.0),
        p10_gb_per_s: at(0.1),
        p90_gb_per_s: at(0.9),
        repetitions: run.rates.len(),
        pinned: run.pinned,
        prefetched,
        huge_pages: buf.huge_pages,
    }
}

/// The peak rate of the kernels' integer dot step (see
/// `sotto_kernels::probe`): multiply-adds per second on registers alone.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ComputeProbe {
    /// The kernel tier whose dot step ran.
    pub isa: String,
    pub threads: usize,
    /// Median over the repetitions, 10^9 multiply-adds (u8 x i8 into i32)
    /// per second.
    pub gmac_per_s: f64,
    /// The fastest repetition.
    pub best_gmac_per_s: f64,
    pub repetitions: usize,
    /// Each thread ran pinned to its own CPU.
    pub pinned: bool,
}

/// The integer dot step's peak of `isa` on `threads` threads, each pinned
/// to its own CPU ([`on_pinned_threads`]); `None` for a tier without a
/// probe (see `sotto_kernels::probe::int8_dot_peak`). A quantized prefill
/// is made of these steps, so its multiply-adds per second over this
/// figure is the share of the machine's compute it reaches.
pub fn probe_int8_dot_peak(
    isa: sotto_kernels::dispatch::Isa,
    threads: usize,
) -> Option<ComputeProbe> {
    use sotto_kernels::probe::int8_dot_peak;
    // one pass is 10^4 rounds (~10^7 multiply-adds, a few ms)
    const ROUNDS: usize = 10_000;
    int8_dot_peak(isa, 1)?;
    let threads = threads.max(1);
    let run = on_pinned_threads(threads, 9, usize::MAX, |_, passes| {
        int8_dot_peak(isa, passes * ROUNDS).unwrap_or(0)
    });
    Some(ComputeProbe {
        isa: isa.name().to_string(),
        threads,
        gmac_per_s: run.quantile(0.5) / 1e9,
        best_gmac_per_s: run.quantile(1.0) / 1e9,
        repetitions: run.rates.len(),
        pinned: run.pinned,
    })
}

/// The repetitions of [`on_pinned_threads`]: units per second, sorted.
struct PinnedRun {
    rates: Vec<f64>,
    pinned: bool,
}

impl PinnedRun {
    /// The rate at quantile `q` (0 = slowest, 1 = fastest).
    fn quantile(&self, q: f64) -> f64 {
        let n = self.rates.len();
        if n == 0 {
            return 0.0;
        }
        self.rates[((n - 1) as f64 * q).round() as usize]
    }
}

/// Timed repetitions of `work(thread, passes)` (which returns the units
/// of work it did) on `threads` threads, each pinned to its own CPU where
/// the OS lets us. Each thread stamps its own start and end, and a
/// repetition runs from the first start to the last end: the main thread
/// may be scheduled late after a barrier on a loaded machine, so its own
/// clock would miss part of the work. An untimed repetition first (pages,
/// pinning), then at least `min_reps` (and at least [`MIN_PROBE_SECS`] of
/// them), each of enough passes (at most `max_passes`) to last
/// [`MIN_REPETITION_SECS`].
fn on_pinned_threads(
    threads: usize,
    min_reps: usize,
    max_passes: usize,
    work: impl Fn(usize, usize) -> u64 + Sync,
) -> PinnedRun {
    use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
    use std::sync::Barrier;

    let threads = threads.max(1);
    let cpus = allowed_cpus();
    let barrier = Barrier::new(threads + 1);
    let stop = AtomicBool::new(false);
    let passes = AtomicUsize::new(1);
    let pinned_threads = AtomicUsize::new(0);
    let base = Instant::now();
    let starts: Vec<AtomicU64> = (0..threads).map(|_| AtomicU64::new(0)).collect();
    let ends: Vec<AtomicU64> = (0..threads).map(|_| AtomicU64::new(0)).collect();
    let units = AtomicU64::new(0);
    let mut rates: Vec<f64> = Vec::new();
    std::thread::scope(|s| {
        for i in 0..threads {
            let (barrier, stop, passes, pinned_threads) =
                (&barrier, &stop, &passes, &pinned_threads);
            let (start, end, base, units, work) = (&starts[i], &ends[i], &base, &units, &work);
            let cpu = (!cpus.is_empty()).then(|| cpus[i % cpus.len()]);
            s.spawn(move || {
                if cpu.is_some_and(pin_current_thread) {
                    pinned_threads.fetch_add(1, Ordering::Relaxed);
                }
                loop {
                    barrier.wait();
                    if stop.load(Ordering::Acquire) {
                        break;
                    }
                    start.store(base.elapsed().as_nanos() as u64, Ordering::Release);
                    let done = work(i, passes.load(Ordering::Acquire));
                    end.store(base.elapsed().as_nanos() as u64, Ordering::Release);
                    units.fetch_add(done, Ordering::AcqRel);
                    barrier.wait();
                }
            });
        }
        // (seconds, units) of one repetition of n passes
        let timed = |n: usize| {
            passes.store(n, Ordering::Release);
            units.store(0, Ordering::Release);
            barrier.wait();
            barrier.wait();
            let t0 = starts.iter().map(|a| a.load(Ordering::Acquire)).min();
            let t1 = ends.iter().map(|a| a.load(Ordering::Acquire)).max();
            let ns = t1.unwrap_or(0).saturating_sub(t0.unwrap_or(0));
            (
                (ns as f64 * 1e-9).max(1e-9),
                units.load(Ordering::Acquire) as f64,
            )
        };
        let (first, _) = timed(1);
        let n = ((MIN_REPETITION_SECS / first).ceil() as usize).clamp(1, max_passes.max(1));
        let mut spent = 0.0;
        while rates.len() < MAX_REPETITIONS
            && (rates.len() < min_reps.max(1) || spent < MIN_PROBE_SECS)
        {
            let (secs, done) = timed(n);
            spent += secs;
            rates.push(done / secs);
        }
        stop.store(true, Ordering::Release);
        barrier.wait();
    });
    rates.sort_by(f64::total_cmp);
    PinnedRun {
        rates,
        pinned: pinned_threads.into_inner() == threads,
    }
}

/// The machine's bandwidth at the cache levels a decode can run from:
/// for each thread count, an `L3` buffer (half the last-level cache),
/// the model's `weights` size, and a `DRAM` buffer (8 × the last-level
/// cache, at least 256 MiB).
pub fn probe_bandwidth_levels(weights_bytes: usize, threads: &[usize]) -> Vec<BandwidthProbe> {
    let l3 = sotto_kernels::cache::last_level_bytes().unwrap_or(32 << 20);
    let sizes = [
        ("L3", l3 / 2),
        ("weights", weights_bytes),
        ("DRAM", (8 * l3).max(256 << 20)),
    ];
    let mut out = Vec::new();
    let mut seen = Vec::new();
    for &t in threads {
        if seen.contains(&t) {
            continue;
        }
        seen.push(t);
        for (what, bytes) in sizes {
            let mut p = probe_read_bandwidth(bytes, t, 9);
            p.what = what.to_string();
            out.push(p);
        }
    }
    out
}

/// The CPUs this process may run on (empty where the OS does not say).
fn allowed_cpus() -> Vec<usize> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        if let Ok(set) = rustix::thread::sched_getaffinity(None) {
            return (0..rustix::thread::CpuSet::MAX_CPU)
                .filter(|&c| set.is_set(c))
                .collect();
        }
    }
    Vec::new()
}

/// Pins the calling thread to `cpu`; false where the OS refuses or has no
/// such call.
fn pin_current_thread(cpu: usize) -> bool {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        let mut set = rustix::thread::CpuSet::new();
        set.set(cpu);
        rustix::thread::sched_setaffinity(None, &set).is_ok()
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        let _ = cpu;
        false
    }
}

/// Peak resident set size of this process (VmHWM), in bytes.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_vm_hwm(&status)
}

fn parse_vm_hwm(status: &str) -> Option<u64> {
    kib_field(status, "VmHWM:")
}

/// The resident set split by what backs it, in bytes: pages of mapped
/// files (`RssFile` + `RssShmem`: the model's weights, the packed-panel
/// cache) and anonymous memory (`RssAnon`: the heap, i.e. the KV cache,
/// tokenizer tables, scratch, and repacked copies made at load).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RssSplit {
    pub file: u64,
    pub anon: u64,
}

/// This process's [`RssSplit`] now (Linux).
pub fn rss_split() -> Option<RssSplit> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_rss_split(&status)
}

fn parse_rss_split(status: &str) -> Option<RssSplit> {
    let bytes = |key| kib_field(status, key);
    Some(RssSplit {
        file: bytes("RssFile:")? + bytes("RssShmem:").unwrap_or(0),
        anon: bytes("RssAnon:")?,
    })
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
    fn a_llama_cpp_build_short_of_this_cpus_isa_is_told() {
        let m = parse_cpuinfo(X86, "x86_64", 3);
        // as benches/llama_cpp_bench.py joins llama.cpp's system info
        let native = "avx+avx2+f16c+fma+avx512+avx512_vbmi";
        assert!(m.flags_llama_cpp_lacks(native).is_empty());
        assert_eq!(m.flags_llama_cpp_lacks("avx+avx2+f16c+fma"), ["avx512"]);
        assert_eq!(
            m.flags_llama_cpp_lacks(""),
            ["avx2", "avx512", "f16c", "fma"]
        );
    }

    #[test]
    fn the_probe_buffer_holds_distinct_words_on_huge_pages_where_given() {
        for words in [1024usize, 5000, 3 << 18] {
            let b = ProbeBuffer::new(words);
            assert_eq!(b.words().len(), words);
            assert!(b.words().iter().enumerate().all(|(i, &w)| w == i as u64));
        }
        // 8 MiB: four whole huge pages at least, where the OS has them
        let b = ProbeBuffer::new(1 << 20);
        let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
            .is_ok_and(|t| !t.contains("[never]"));
        if !thp {
            assert!(!b.huge_pages, "no huge pages to be had");
        }
        eprintln!("8 MiB probe buffer on huge pages: {}", b.huge_pages);
    }

    #[test]
    fn rss_splits_into_file_and_anonymous_pages() {
        let status = "VmHWM:\t  200 kB\nVmRSS:\t  150 kB\nRssAnon:\t  100 kB\n\
RssFile:\t   40 kB\nRssShmem:\t   10 kB\n";
        assert_eq!(
            parse_rss_split(status),
            Some(RssSplit {
                file: 50 * 1024,
                anon: 100 * 1024
            })
        );
        assert_eq!(parse_rss_split("VmRSS: 1 kB\n"), None);
    }

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
        assert_eq!(probe::sum_words(&[1, 2, 3, 4, 5, 6, 7], None), 28);
        let p = probe_read_bandwidth(1 << 20, 2, 3);
        assert_eq!(p.buffer_bytes, 1 << 20);
        assert!(p.gb_per_s > 0.0 && p.gb_per_s.is_finite());
        assert!(p.repetitions >= 3);
        assert!(p.p10_gb_per_s <= p.gb_per_s && p.gb_per_s <= p.p90_gb_per_s);
        assert!(p.p90_gb_per_s <= p.best_gb_per_s);
    }
}
