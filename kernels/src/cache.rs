//! The machine's data caches, as the OS describes them, for the kernels'
//! blocking (prefill token blocks) and the benchmarks' bandwidth probes.
//!
//! Linux and Android describe every CPU's caches in sysfs
//! (`/sys/devices/system/cpu/cpuN/cache/indexM/{level,type,size,
//! shared_cpu_list}`). Elsewhere, and where sysfs hides them (some
//! Android kernels do), the readers return `None` and callers take a
//! fallback of their own.

use std::path::Path;

/// Most CPUs looked at: a phone has at most a dozen, and the big cores
/// come last there; a server's first 64 are alike.
const MAX_CPUS: usize = 64;

/// One cache as sysfs describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Cache {
    level: u32,
    bytes: usize,
    /// CPUs sharing it (at least 1).
    shared_by: usize,
}

/// The largest share of a unified or data L2 cache one core has, over
/// the machine's CPUs: the cache's size over the CPUs sharing it, so a
/// cluster's shared L2 counts once per core. On a phone with big and
/// little cores this is a big core's, where the pool's threads run the
/// heavy work.
pub fn l2_bytes_per_core() -> Option<usize> {
    l2_per_core_under(Path::new(SYSFS_CPUS))
}

/// Last-level cache size of CPU 0 (its highest-numbered level).
pub fn last_level_bytes() -> Option<usize> {
    caches_of(&Path::new(SYSFS_CPUS).join("cpu0/cache"))
        .into_iter()
        .max_by_key(|c| c.level)
        .map(|c| c.bytes)
}

const SYSFS_CPUS: &str = "/sys/devices/system/cpu";

/// [`l2_bytes_per_core`] over the `cpuN/cache` folders under `root`.
fn l2_per_core_under(root: &Path) -> Option<usize> {
    let mut best: Option<usize> = None;
    for cpu in 0..MAX_CPUS {
        let dir = root.join(format!("cpu{cpu}/cache"));
        if !dir.exists() {
            break;
        }
        for c in caches_of(&dir) {
            if c.level == 2 {
                let share = c.bytes / c.shared_by;
                best = Some(best.map_or(share, |b| b.max(share)));
            }
        }
    }
    best
}

/// The data and unified caches listed under a CPU's sysfs `cache` folder
/// (instruction caches left out); none where the folder cannot be read.
fn caches_of(dir: &Path) -> Vec<Cache> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let read = |f: &str| std::fs::read_to_string(entry.path().join(f)).ok();
        if read("type").is_some_and(|t| t.trim() == "Instruction") {
            continue;
        }
        let (Some(level), Some(size)) = (read("level"), read("size")) else {
            continue;
        };
        let (Ok(level), Some(bytes)) = (level.trim().parse::<u32>(), parse_size(&size)) else {
            continue;
        };
        let shared_by = read("shared_cpu_list")
            .and_then(|l| count_cpu_list(&l))
            .unwrap_or(1)
            .max(1);
        out.push(Cache {
            level,
            bytes,
            shared_by,
        });
    }
    out
}

/// "32768K", "1M", "512" (sysfs cache sizes) in bytes.
fn parse_size(text: &str) -> Option<usize> {
    let t = text.trim();
    let (digits, unit) = match t.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => t.split_at(i),
        None => (t, ""),
    };
    let n: usize = digits.parse().ok()?;
    let shift = match unit.trim() {
        "" => 0,
        "K" | "KB" | "KiB" => 10,
        "M" | "MB" | "MiB" => 20,
        "G" | "GB" | "GiB" => 30,
        _ => return None,
    };
    n.checked_mul(1 << shift)
}

/// How many CPUs a sysfs CPU list names ("0-3,8,10-11" is 7).
fn count_cpu_list(text: &str) -> Option<usize> {
    let mut n = 0usize;
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        n += match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (a.parse::<usize>().ok()?, b.parse::<usize>().ok()?);
                b.checked_sub(a)? + 1
            }
            None => {
                part.parse::<usize>().ok()?;
                1
            }
        };
    }
    Some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("32768K\n"), Some(32 << 20));
        assert_eq!(parse_size("1M"), Some(1 << 20));
        assert_eq!(parse_size("512"), Some(512));
        assert_eq!(parse_size("lots"), None);
        assert_eq!(parse_size(""), None);
        assert_eq!(parse_size("99999999999999999999G"), None);
    }

    #[test]
    fn cpu_lists_count() {
        assert_eq!(count_cpu_list("0\n"), Some(1));
        assert_eq!(count_cpu_list("0-1"), Some(2));
        assert_eq!(count_cpu_list("0-3,8,10-11"), Some(7));
        assert_eq!(count_cpu_list("3-1"), None);
        assert_eq!(count_cpu_list("a-b"), None);
    }

    /// Writes one sysfs cache entry under `dir`.
    fn entry(dir: &Path, idx: &str, level: &str, ty: &str, size: &str, shared: &str) {
        let d = dir.join(idx);
        std::fs::create_dir_all(&d).unwrap();
        for (f, v) in [("level", level), ("type", ty), ("size", size)] {
            std::fs::write(d.join(f), v).unwrap();
        }
        std::fs::write(d.join("shared_cpu_list"), shared).unwrap();
    }

    fn scratch(name: &str) -> std::path::PathBuf {
        let root = std::env::temp_dir().join(format!("sotto-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        root
    }

    #[test]
    fn a_folder_of_caches_reads() {
        let root = scratch("caches");
        entry(&root, "index0", "1", "Data", "48K", "0");
        entry(&root, "index1", "1", "Instruction", "64K", "0");
        entry(&root, "index2", "2", "Unified", "2048K", "0-3");
        entry(&root, "index3", "3", "Unified", "8M", "0-7");
        entry(&root, "index4", "x", "Unified", "8M", "0-7");
        let mut got = caches_of(&root);
        got.sort_by_key(|c| c.level);
        std::fs::remove_dir_all(&root).unwrap();
        let c = |level, bytes, shared_by| Cache {
            level,
            bytes,
            shared_by,
        };
        assert_eq!(got, [c(1, 48 << 10, 1), c(2, 2 << 20, 4), c(3, 8 << 20, 8)]);
        assert!(caches_of(&root).is_empty());
    }

    #[test]
    fn l2_per_core_takes_the_big_cores_share() {
        // two little cores sharing 256 KiB, two big ones with 1 MiB each,
        // and a fifth CPU past a gap in the numbering (not looked at)
        let root = scratch("cpus");
        for cpu in 0..2 {
            let d = root.join(format!("cpu{cpu}/cache"));
            entry(&d, "index2", "2", "Unified", "256K", "0-1");
        }
        for cpu in 2..4 {
            let d = root.join(format!("cpu{cpu}/cache"));
            entry(&d, "index0", "1", "Data", "64K", &cpu.to_string());
            entry(&d, "index2", "2", "Unified", "1M", &cpu.to_string());
        }
        entry(
            &root.join("cpu5/cache"),
            "index2",
            "2",
            "Unified",
            "8M",
            "5",
        );
        let got = l2_per_core_under(&root);
        let none = l2_per_core_under(&root.join("absent"));
        std::fs::remove_dir_all(&root).unwrap();
        assert_eq!(got, Some(1 << 20));
        assert_eq!(none, None);
    }
}
