//! The x16 panels a kernel table repacks a model's matrices into, kept on
//! disk so that a warm start maps them instead of packing again.
//!
//! A cache file holds every packed matrix of one model for one kernel
//! table. Its name is a digest of what the panels depend on: the model
//! file's identity (its canonical path, size, modification time and, on
//! Unix, device and inode), the file's header (metadata and tensor table),
//! the table's ISA and a probe of its packing (a small fixed matrix of
//! each packed type, packed and hashed at start-up, so a change of the
//! panel layout in a later build never reads an older file as its own).
//! Reading the whole model file to digest its weights would cost as much
//! as packing them.
//!
//! Written atomically (a temporary file renamed over the name), and
//! verified on open: magic, format version, the digest, every entry's
//! name, type, shape and size against the model, alignment and bounds,
//! and a CRC-32 of the table and of the data (against truncation and
//! corruption, not against someone who can write the user's cache, who
//! could as well write the model). A file that fails any check is packed
//! again and replaced; a cache that cannot be written costs nothing but
//! the next start's packing. The directory is kept under a size budget by
//! removing the least recently used files.
//!
//! Layout (little-endian):
//! ```text
//! [0..8)   b"SOTTOX16"        [8..12)  format version (u32)
//! [12..44) key (SHA-256)      [44..48) entries (u32)
//! [48..56) data offset (u64, a multiple of 4096)
//! [56..64) data length (u64)  [64..68) CRC-32 of the data
//! [68..72) CRC-32 of the entry table
//! [72..)   entries: ggml type id u32, rows u64, cols u64,
//!          offset u64 (from the data offset, a multiple of 64),
//!          length u64, name length u32, name
//! then zeros to the data offset, then the panels.
//! ```

use sha2::{Digest, Sha256};
use sotto_kernels::dispatch::KernelTable;
use sotto_kernels::ops::{PackedMatrix, PackedSource, QMatrix};
use sotto_kernels::quant::{DType, GgmlType};
use sotto_models::{GgufFile, MappedFile, Weight};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

const MAGIC: [u8; 8] = *b"SOTTOX16";
const FORMAT_VERSION: u32 = 1;
const FIXED: usize = 72;
const DATA_ALIGN: usize = 4096;
const PANEL_ALIGN: usize = 64;
/// The directory's budget when `SOTTO_PACKED_CACHE_MB` does not set one.
const DEFAULT_BUDGET_MB: u64 = 4096;

/// Where packed panels are cached, if anywhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackedCache {
    dir: Option<PathBuf>,
    budget_bytes: u64,
}

impl PackedCache {
    /// No cache: every load packs.
    pub fn off() -> PackedCache {
        PackedCache {
            dir: None,
            budget_bytes: 0,
        }
    }

    /// Files in `dir`, at most `budget_bytes` of them (least recently used
    /// go first; the newest file is kept even past the budget).
    pub fn in_dir(dir: impl Into<PathBuf>, budget_bytes: u64) -> PackedCache {
        PackedCache {
            dir: Some(dir.into()),
            budget_bytes,
        }
    }

    /// The default: `$SOTTO_PACKED_CACHE` (a directory, or `0` / `off` for
    /// none), else `packed/` in `$SOTTO_CACHE`, `$XDG_CACHE_HOME/sotto` or
    /// `~/.cache/sotto` (the user cache `sotto fetch` keeps models in);
    /// budget `$SOTTO_PACKED_CACHE_MB` (4096). No home and no setting: off.
    pub fn from_env() -> PackedCache {
        let dir = match std::env::var_os("SOTTO_PACKED_CACHE").filter(|v| !v.is_empty()) {
            Some(v) if v == "0" || v == "off" => None,
            Some(v) => Some(PathBuf::from(v)),
            None => user_cache_dir().map(|p| p.join("packed")),
        };
        let mb = std::env::var("SOTTO_PACKED_CACHE_MB")
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(DEFAULT_BUDGET_MB);
        PackedCache {
            dir,
            budget_bytes: mb.saturating_mul(1 << 20),
        }
    }

    /// The directory's size budget.
    pub fn budget_bytes(&self) -> u64 {
        self.budget_bytes
    }
}

/// Sotto's user cache, where `sotto fetch` keeps models and the engine its
/// packed panels: `$SOTTO_CACHE`, else `$XDG_CACHE_HOME/sotto`, else
/// `~/.cache/sotto`; `None` when none of them is set (an app on a phone
/// passes its own directory instead).
pub fn user_cache_dir() -> Option<PathBuf> {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    var("SOTTO_CACHE")
        .map(PathBuf::from)
        .or_else(|| var("XDG_CACHE_HOME").map(|p| PathBuf::from(p).join("sotto")))
        .or_else(|| var("HOME").map(|p| PathBuf::from(p).join(".cache").join("sotto")))
}

/// What a load did about packed panels.
#[derive(Debug, Clone, PartialEq)]
pub enum PackedCacheStatus {
    /// The kernel table reads every matrix in the file's layout.
    NothingPacked,
    /// Packed at load; caching is off.
    Off {
        /// Time spent packing.
        pack: Duration,
    },
    /// Packed at load: the weights are not the file's own bytes (an
    /// adapter merged in, a converted or in-memory model), so there is no
    /// file to key a cache by.
    NotCacheable {
        /// Time spent packing.
        pack: Duration,
    },
    /// Mapped from the cache: nothing packed.
    Hit {
        /// The cache file.
        path: PathBuf,
        /// Its panels' bytes.
        bytes: u64,
    },
    /// Packed at load (a cold start) and written to the cache.
    Written {
        /// The cache file.
        path: PathBuf,
        /// Its panels' bytes.
        bytes: u64,
        /// Time spent packing.
        pack: Duration,
        /// Why an existing file was not used (`None`: there was none).
        replaced: Option<String>,
    },
    /// Packed at load; the cache could not be written.
    WriteFailed {
        /// Time spent packing.
        pack: Duration,
        /// The I/O error.
        reason: String,
    },
}

impl PackedCacheStatus {
    /// Time spent packing at this load (zero on a hit).
    pub fn pack_time(&self) -> Duration {
        match self {
            PackedCacheStatus::NothingPacked | PackedCacheStatus::Hit { .. } => Duration::ZERO,
            PackedCacheStatus::Off { pack }
            | PackedCacheStatus::NotCacheable { pack }
            | PackedCacheStatus::Written { pack, .. }
            | PackedCacheStatus::WriteFailed { pack, .. } => *pack,
        }
    }

    /// One line for reports: `hit`, `cold (packed in 41 ms, written)`, …
    pub fn summary(&self) -> String {
        let ms = |d: &Duration| format!("{:.0} ms", d.as_secs_f64() * 1e3);
        match self {
            PackedCacheStatus::NothingPacked => "file layout".into(),
            PackedCacheStatus::Off { pack } => format!("packed in {}, cache off", ms(pack)),
            PackedCacheStatus::NotCacheable { pack } => {
                format!("packed in {}, not cacheable", ms(pack))
            }
            PackedCacheStatus::Hit { .. } => "mapped from cache".into(),
            PackedCacheStatus::Written { pack, replaced, .. } => match replaced {
                None => format!("cold: packed in {}, cached", ms(pack)),
                Some(r) => format!("packed in {}, cache replaced ({r})", ms(pack)),
            },
            PackedCacheStatus::WriteFailed { pack, reason } => {
                format!("packed in {}, cache not written: {reason}", ms(pack))
            }
        }
    }
}

/// One matrix the table packs: the weight and the packed size.
struct Entry<'w> {
    weight: &'w Weight,
    len: usize,
}

/// The cache file mapped, as the source its matrices borrow from.
struct Mapped(MappedFile);

impl PackedSource for Mapped {
    fn bytes(&self) -> &[u8] {
        self.0.bytes()
    }
}

/// `weights` packed for `kernels` (`None` where the table reads the file's
/// layout), in order: from the cache when a valid file is there, else
/// packed now (on the caller's pool) and written to the cache.
pub(super) fn load_or_pack(
    kernels: &KernelTable,
    gguf: &GgufFile,
    weights: &[&Weight],
    cache: &PackedCache,
) -> crate::Result<(Vec<Option<PackedMatrix>>, PackedCacheStatus)> {
    let sizes: Vec<Option<usize>> = weights
        .iter()
        .map(|w| PackedMatrix::packed_len(kernels, w.dtype, w.rows(), w.cols()))
        .collect();
    if sizes.iter().all(Option::is_none) {
        return Ok((
            weights.iter().map(|_| None).collect(),
            PackedCacheStatus::NothingPacked,
        ));
    }
    let entries: Vec<Entry<'_>> = weights
        .iter()
        .zip(&sizes)
        .filter_map(|(w, s)| s.map(|len| Entry { weight: w, len }))
        .collect();
    let cacheable = entries.iter().all(|e| e.weight.is_in_file(gguf));
    let key = match (&cache.dir, cacheable) {
        (Some(_), true) => key(kernels, gguf, &entries).ok(),
        _ => None,
    };
    let file = cache
        .dir
        .as_ref()
        .zip(key.as_ref())
        .map(|(d, k)| d.join(format!("{}.x16", hex(&k[..16]))));
    let mut replaced = None;
    if let (Some(path), Some(k)) = (&file, &key) {
        match open(path, k, kernels, &entries) {
            Ok(Some(mats)) => {
                touch(path);
                let bytes = entries.iter().map(|e| e.len as u64).sum();
                let status = PackedCacheStatus::Hit {
                    path: path.clone(),
                    bytes,
                };
                return Ok((place(&sizes, mats), status));
            }
            Ok(None) => {}
            Err(reason) => replaced = Some(reason),
        }
    }
    let start = Instant::now();
    let pack_all = || {
        entries
            .iter()
            .map(|e| {
                let m = QMatrix::new(
                    e.weight.dtype,
                    e.weight.rows(),
                    e.weight.cols(),
                    e.weight.data(),
                )?;
                let p =
                    PackedMatrix::pack_for(kernels, &m)?.ok_or_else(|| crate::Error::Backend {
                        backend: "cpu",
                        reason: format!("{} was to be packed and was not", e.weight.name),
                    })?;
                // The file's pages of a packed matrix leave the resident set
                // (the tied embedding reads a few rows of them back per token).
                e.weight.release_pages();
                Ok(p)
            })
            .collect::<crate::Result<Vec<_>>>()
    };
    let mut packed = pack_all()?;
    let pack = start.elapsed();
    let status = match (&cache.dir, &file, &key) {
        (None, _, _) => PackedCacheStatus::Off { pack },
        (Some(_), _, _) if !cacheable => PackedCacheStatus::NotCacheable { pack },
        (Some(dir), Some(path), Some(k)) => match write(dir, path, k, &entries, &packed) {
            Ok(bytes) => {
                evict(dir, path, cache.budget_bytes);
                // Run from the file just written, as every later start
                // will: mapped on 2 MiB pages (see `drop_cached_pages`),
                // where the panels packed here sit on 4 KiB ones (the
                // Llama-3.2-1B shape decoded at 95.8 ms a token from them,
                // 73.0 from the file). They are freed first, so the two
                // copies are never resident together; reading the file
                // back costs a disk read, and one that does not open
                // (not seen) is packed again.
                drop(packed);
                packed = match open(path, k, kernels, &entries) {
                    Ok(Some(mapped)) => mapped,
                    _ => pack_all()?,
                };
                PackedCacheStatus::Written {
                    path: path.clone(),
                    bytes,
                    pack,
                    replaced,
                }
            }
            Err(e) => PackedCacheStatus::WriteFailed {
                pack,
                reason: e.to_string(),
            },
        },
        (Some(_), _, _) => PackedCacheStatus::WriteFailed {
            pack,
            reason: "the model file's identity could not be read".into(),
        },
    };
    Ok((place(&sizes, packed), status))
}

/// The packed matrices back in the order of the weights they came from.
fn place(sizes: &[Option<usize>], packed: Vec<PackedMatrix>) -> Vec<Option<PackedMatrix>> {
    let mut it = packed.into_iter();
    sizes.iter().map(|s| s.and_then(|_| it.next())).collect()
}

/// The digest the cache file is named by and starts with (see the module
/// documentation).
fn key(kernels: &KernelTable, gguf: &GgufFile, entries: &[Entry<'_>]) -> std::io::Result<[u8; 32]> {
    let path = gguf
        .path()
        .ok_or_else(|| std::io::Error::other("no path"))?;
    let path = std::fs::canonicalize(path)?;
    let meta = std::fs::metadata(&path)?;
    let mut h = Sha256::new();
    h.update(MAGIC);
    h.update(FORMAT_VERSION.to_le_bytes());
    h.update(kernels.isa.name().as_bytes());
    h.update(path.to_string_lossy().as_bytes());
    h.update(meta.len().to_le_bytes());
    let mtime = meta
        .modified()?
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    h.update(mtime.as_nanos().to_le_bytes());
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        h.update(meta.dev().to_le_bytes());
        h.update(meta.ino().to_le_bytes());
    }
    h.update(gguf.header_bytes());
    // The panel layout of every packed type, as this build packs it.
    let mut probed: Vec<DType> = Vec::new();
    for e in entries {
        let d = e.weight.dtype;
        if probed.contains(&d) {
            continue;
        }
        probed.push(d);
        let (rows, cols) = (17, 2 * d.block_size());
        let len = d.row_bytes(cols).unwrap_or(0) * rows;
        let bytes: Vec<u8> = (0..len).map(|i| (i * 131 + 7) as u8).collect();
        let probe = QMatrix::new(d, rows, cols, &bytes)
            .ok()
            .and_then(|m| PackedMatrix::pack_for(kernels, &m).ok().flatten());
        h.update(GgmlType::from(d).id().to_le_bytes());
        if let Some(p) = probe {
            h.update(p.bytes());
        }
    }
    Ok(h.finalize().into())
}

/// The matrices of a valid cache file at `path`; `Ok(None)` when there is
/// none, `Err(why)` when the file is there and unusable.
fn open(
    path: &Path,
    key: &[u8; 32],
    kernels: &KernelTable,
    entries: &[Entry<'_>],
) -> Result<Option<Vec<PackedMatrix>>, String> {
    let map = match MappedFile::open(path) {
        Ok(m) => m,
        Err(sotto_models::Error::Io { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            return Ok(None)
        }
        Err(e) => return Err(format!("unreadable: {e}")),
    };
    let b = map.bytes();
    let u32_at = |o: usize| {
        b.get(o..o + 4)
            .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    };
    let u64_at = |o: usize| {
        b.get(o..o + 8)
            .and_then(|s| s.try_into().ok())
            .map(u64::from_le_bytes)
    };
    if b.len() < FIXED || b[..8] != MAGIC {
        return Err("not a packed-panel file".into());
    }
    if u32_at(8) != Some(FORMAT_VERSION) {
        return Err("another format version".into());
    }
    if b[12..44] != key[..] {
        return Err("made for another model or build".into());
    }
    let n = u32_at(44).unwrap_or(0) as usize;
    let data_off = u64_at(48).unwrap_or(0) as usize;
    let data_len = u64_at(56).unwrap_or(0) as usize;
    if n != entries.len()
        || !data_off.is_multiple_of(DATA_ALIGN)
        || data_off < FIXED
        || data_off.checked_add(data_len) != Some(b.len())
    {
        return Err("truncated or mis-sized".into());
    }
    // the entry table, checked against the model's matrices
    let mut at = FIXED;
    let mut places = Vec::with_capacity(n);
    for e in entries {
        let (Some(ty), Some(rows), Some(cols), Some(off), Some(len), Some(name_len)) = (
            u32_at(at),
            u64_at(at + 4),
            u64_at(at + 12),
            u64_at(at + 20),
            u64_at(at + 28),
            u32_at(at + 36),
        ) else {
            return Err("entry table truncated".into());
        };
        let name_end = (at + 40)
            .checked_add(name_len as usize)
            .filter(|&x| x <= data_off);
        let Some(name_end) = name_end else {
            return Err("entry table truncated".into());
        };
        let w = e.weight;
        let same = b[at + 40..name_end] == *w.name.as_bytes()
            && ty == GgmlType::from(w.dtype).id()
            && rows == w.rows() as u64
            && cols == w.cols() as u64
            && len == e.len as u64;
        if !same {
            return Err(format!("entry for {} does not match the model", w.name));
        }
        let (off, len) = (off as usize, len as usize);
        if !off.is_multiple_of(PANEL_ALIGN) || off.checked_add(len).is_none_or(|end| end > data_len)
        {
            return Err(format!("entry for {} out of bounds", w.name));
        }
        places.push(data_off + off);
        at = name_end;
    }
    if u32_at(68) != Some(crc32fast::hash(&b[FIXED..at])) {
        return Err("entry table checksum mismatch".into());
    }
    if u32_at(64) != Some(crc32_parallel(&b[data_off..])) {
        return Err("data checksum mismatch".into());
    }
    let source: Arc<dyn PackedSource> = Arc::new(Mapped(map));
    entries
        .iter()
        .zip(places)
        .map(|(e, start)| {
            let w = e.weight;
            PackedMatrix::from_source(
                kernels,
                w.dtype,
                w.rows(),
                w.cols(),
                Arc::clone(&source),
                start,
            )
            .map_err(|err| format!("{}: {err}", w.name))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// The CRC-32 of `b`, its chunks summed on the caller's pool and combined
/// in order (the same value as one pass). One thread fewer than the pool
/// has (at least one): the load's longest step, the tokenizer's BPE
/// model, builds meanwhile on a thread of its own, and a checksum that
/// takes every core only slows that down. The sum itself runs at memory
/// speed; most of its time is mapping the file's pages, which the first
/// token would map anyway.
fn crc32_parallel(b: &[u8]) -> u32 {
    use rayon::prelude::*;
    let parts = rayon::current_num_threads().saturating_sub(1).max(1);
    let chunk = b.len().div_ceil(parts).max(1 << 20);
    b.par_chunks(chunk)
        .map(|c| {
            let mut h = crc32fast::Hasher::new();
            h.update(c);
            h
        })
        .reduce_with(|mut a, b| {
            a.combine(&b);
            a
        })
        .unwrap_or_default()
        .finalize()
}

/// The cache file is written in writes of this size at offsets of its
/// multiples: Linux then caches it in 2 MiB folios (ext4 with large folios),
/// which later starts map on 2 MiB pages, where a decode that streams the
/// panels takes a TLB miss per 2 MiB instead of per 4 KiB. The 1 MiB
/// writes of a buffered writer left SmolLM2-135M's 94 MiB cache on 4 KiB
/// pages but for 8 MiB, and 1-thread decode ran at 82–88 tokens/s; written
/// in these chunks, 92 MiB of it mapped on 2 MiB pages and decode ran at
/// 114–119.
const WRITE_CHUNK: usize = 2 << 20;

/// Writes `packed` as the cache file `path` (a temporary file in `dir`
/// renamed over it, in [`WRITE_CHUNK`] writes); returns the panels' bytes.
fn write(
    dir: &Path,
    path: &Path,
    key: &[u8; 32],
    entries: &[Entry<'_>],
    packed: &[PackedMatrix],
) -> std::io::Result<u64> {
    let mut table = Vec::new();
    let mut offsets = Vec::with_capacity(packed.len());
    let mut data_len = 0usize;
    for (e, p) in entries.iter().zip(packed) {
        offsets.push(data_len);
        table.extend_from_slice(&GgmlType::from(e.weight.dtype).id().to_le_bytes());
        table.extend_from_slice(&(e.weight.rows() as u64).to_le_bytes());
        table.extend_from_slice(&(e.weight.cols() as u64).to_le_bytes());
        table.extend_from_slice(&(data_len as u64).to_le_bytes());
        table.extend_from_slice(&(p.bytes().len() as u64).to_le_bytes());
        table.extend_from_slice(&(e.weight.name.len() as u32).to_le_bytes());
        table.extend_from_slice(e.weight.name.as_bytes());
        data_len = (data_len + p.bytes().len()).next_multiple_of(PANEL_ALIGN);
    }
    let data_off = (FIXED + table.len()).next_multiple_of(DATA_ALIGN);
    // the data section: each matrix's panels, then zeros to a 64-byte boundary
    let zeros = [0u8; PANEL_ALIGN];
    let data: Vec<&[u8]> = packed
        .iter()
        .zip(&offsets)
        .flat_map(|(p, &off)| {
            let end = off + p.bytes().len();
            [p.bytes(), &zeros[..end.next_multiple_of(PANEL_ALIGN) - end]]
        })
        .collect();
    let mut crc = crc32fast::Hasher::new();
    data.iter().for_each(|d| crc.update(d));
    let mut head = Vec::with_capacity(data_off);
    head.extend_from_slice(&MAGIC);
    head.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    head.extend_from_slice(key);
    head.extend_from_slice(&(packed.len() as u32).to_le_bytes());
    head.extend_from_slice(&(data_off as u64).to_le_bytes());
    head.extend_from_slice(&(data_len as u64).to_le_bytes());
    head.extend_from_slice(&crc.finalize().to_le_bytes());
    head.extend_from_slice(&crc32fast::hash(&table).to_le_bytes());
    head.extend_from_slice(&table);
    head.resize(data_off, 0);

    std::fs::create_dir_all(dir)?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let tmp = dir.join(format!(
        ".{}.{}-{nanos}.tmp",
        std::process::id(),
        hex(&key[..4])
    ));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        let mut chunk = Vec::with_capacity(WRITE_CHUNK);
        for mut piece in std::iter::once(head.as_slice()).chain(data.iter().copied()) {
            while !piece.is_empty() {
                let n = piece.len().min(WRITE_CHUNK - chunk.len());
                chunk.extend_from_slice(&piece[..n]);
                piece = &piece[n..];
                if chunk.len() == WRITE_CHUNK {
                    f.write_all(&chunk)?;
                    chunk.clear();
                }
            }
        }
        f.write_all(&chunk)?;
        f.sync_data()?;
        drop_cached_pages(&f);
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map(|()| packed.iter().map(|p| p.bytes().len() as u64).sum())
}

/// Asks the kernel to drop the page cache of the file just written and
/// synced. Its writes leave it cached in whatever folios could be had at
/// the time: a 763 MiB cache written in 2 MiB chunks on a machine hours
/// into its uptime was mapped by the next start on 2 MiB pages for only
/// 412 of its 763 MiB, and that start decoded the Llama-3.2-1B shape at
/// 78.6 ms a token. Dropped, the next start's mapping (advised
/// `MADV_HUGEPAGE`) reads it back in 2 MiB folios: all of it on 2 MiB
/// pages, 69.0 ms a token. The cost is that one start reading the file
/// from disk (1.6 GB/s here). Advice only: where it is not supported
/// nothing changes.
fn drop_cached_pages(f: &std::fs::File) {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        let _ = rustix::fs::fadvise(f, 0, None, rustix::fs::Advice::DontNeed);
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = f;
}

/// Marks `path` as just used (the eviction order).
fn touch(path: &Path) {
    if let Ok(f) = std::fs::File::options().append(true).open(path) {
        let _ = f.set_modified(std::time::SystemTime::now());
    }
}

/// Removes the least recently used cache files of `dir` until the rest fit
/// `budget` bytes; `keep` (just written) stays whatever its size.
/// Temporary files of writers that died are removed after an hour.
fn evict(dir: &Path, keep: &Path, budget: u64) {
    let Ok(list) = std::fs::read_dir(dir) else {
        return;
    };
    let now = std::time::SystemTime::now();
    let mut files = Vec::new();
    for e in list.flatten() {
        let p = e.path();
        let Ok(m) = e.metadata() else { continue };
        let modified = m.modified().unwrap_or(now);
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') && name.ends_with(".tmp") {
            if now.duration_since(modified).unwrap_or_default() > Duration::from_secs(3600) {
                let _ = std::fs::remove_file(&p);
            }
        } else if name.ends_with(".x16") && p != keep {
            files.push((modified, m.len(), p));
        }
    }
    let keep_len = std::fs::metadata(keep).map(|m| m.len()).unwrap_or(0);
    let mut total: u64 = keep_len + files.iter().map(|f| f.1).sum::<u64>();
    files.sort();
    for (_, len, p) in files {
        if total <= budget {
            break;
        }
        if std::fs::remove_file(&p).is_ok() {
            total -= len;
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::{Backend, CpuBackend, LogitsFor};
    use sotto_kernels::dispatch::{available_isas, table_for};
    use sotto_models::testutil::{quantize_matrices, tiny_model_random, TinyDims};
    use sotto_models::Model;

    /// A model file of Q4_0 and Q8_0 matrices in a fresh directory.
    fn model_file(dir: &Path) -> PathBuf {
        let dims = TinyDims {
            n_layer: 2,
            d_model: 128,
            n_head: 4,
            n_kv_head: 2,
            head_dim: 32,
            ffn_dim: 256,
        };
        let mut w = tiny_model_random("llama", dims, 5);
        quantize_matrices(&mut w, &[DType::Q4_0, DType::Q8_0]).unwrap();
        std::fs::create_dir_all(dir).unwrap();
        let path = dir.join("model.gguf");
        std::fs::write(&path, w.to_bytes()).unwrap();
        path
    }

    fn logits(b: &mut CpuBackend) -> Vec<f32> {
        let mut cache = b.new_cache(16).unwrap();
        let mut l = b
            .forward(&mut cache, &[3, 1, 4, 1, 5], LogitsFor::All)
            .unwrap();
        l.extend(b.forward(&mut cache, &[9], LogitsFor::Last).unwrap());
        l
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    fn cache_files(dir: &Path) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
            .map(|r| r.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        v.retain(|p| p.extension().is_some_and(|e| e == "x16"));
        v.sort();
        v
    }

    /// On every table that repacks (every x86 tier): a cold load packs
    /// and writes the cache, a warm one maps it and packs nothing, with the
    /// same logits bit for bit; a damaged, truncated or foreign file is
    /// refused, packed again and replaced, never read; a changed model file
    /// gets a file of its own; the budget removes the least recently used;
    /// a cache that cannot be written leaves the backend working.
    #[test]
    fn packed_panels_are_cached_mapped_verified_and_replaced() {
        let isas: Vec<_> = available_isas()
            .into_iter()
            .filter(|&i| {
                let t = table_for(i).unwrap();
                PackedMatrix::packed_len(t, DType::Q4_0, 16, 128).is_some()
            })
            .collect();
        // (every x86 tier from AVX2 up repacks: never skipped there)
        #[cfg(target_arch = "x86_64")]
        assert_eq!(
            !isas.is_empty(),
            is_x86_feature_detected!("avx2"),
            "{isas:?}"
        );
        let root = std::env::temp_dir().join(format!("sotto-packed-cache-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for isa in isas {
            let kernels = table_for(isa).unwrap();
            let dir = root.join(isa.name());
            let path = model_file(&dir);
            let cache = PackedCache::in_dir(dir.join("packed"), 1 << 30);
            let load = |cache: &PackedCache| {
                let model = Arc::new(Model::load(&path).unwrap());
                CpuBackend::with_kernels_and_cache(model, 1, kernels, cache).unwrap()
            };
            let mut off = load(&PackedCache::off());
            assert!(
                matches!(off.packed_cache(), PackedCacheStatus::Off { .. }),
                "{isa}"
            );
            let want = bits(&logits(&mut off));

            // every packed matrix of a backend read from the cache file
            let all_mapped = |b: &CpuBackend| {
                let owned: Vec<bool> = b
                    .packed
                    .iter()
                    .flat_map(|l| [&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down])
                    .flatten()
                    .chain(b.output_packed.as_deref())
                    .map(PackedMatrix::is_owned)
                    .collect();
                !owned.is_empty() && !owned.contains(&true)
            };

            let mut cold = load(&cache);
            let PackedCacheStatus::Written {
                path: file,
                replaced: None,
                ..
            } = cold.packed_cache().clone()
            else {
                panic!("{isa}: cold load {:?}", cold.packed_cache())
            };
            assert_eq!(bits(&logits(&mut cold)), want, "{isa} cold");
            assert_eq!(cold.packed_bytes(), off.packed_bytes());
            // the start that wrote the file runs from it, as later ones do
            assert!(all_mapped(&cold), "{isa}: cold start kept its own panels");

            let mut warm = load(&cache);
            assert!(
                matches!(warm.packed_cache(), PackedCacheStatus::Hit { path, .. } if *path == file),
                "{isa}: warm load {:?}",
                warm.packed_cache()
            );
            assert_eq!(warm.packed_cache().pack_time(), Duration::ZERO);
            assert_eq!(warm.packed_bytes(), off.packed_bytes());
            assert!(all_mapped(&warm), "{isa}: warm start packed");
            assert_eq!(bits(&logits(&mut warm)), want, "{isa} warm");
            drop(warm);

            // damaged in the data, in the table, truncated, another key
            let good = std::fs::read(&file).unwrap();
            let data_off = u64::from_le_bytes(good[48..56].try_into().unwrap()) as usize;
            let mut flipped = good.clone();
            flipped[data_off + 100] ^= 0x10;
            let mut renamed = good.clone();
            renamed[FIXED + 40] ^= 1;
            let mut foreign = good.clone();
            foreign[20] ^= 1;
            for (what, bytes, reason) in [
                ("data", flipped, "data checksum mismatch"),
                ("table", renamed, "does not match the model"),
                (
                    "truncated",
                    good[..good.len() - 64].to_vec(),
                    "truncated or mis-sized",
                ),
                ("header", good[..40].to_vec(), "not a packed-panel file"),
                ("key", foreign, "made for another model or build"),
            ] {
                std::fs::write(&file, &bytes).unwrap();
                let mut b = load(&cache);
                match b.packed_cache() {
                    PackedCacheStatus::Written {
                        replaced: Some(r), ..
                    } => {
                        assert!(r.contains(reason), "{isa} {what}: {r}")
                    }
                    s => panic!("{isa} {what}: {s:?}"),
                }
                assert_eq!(bits(&logits(&mut b)), want, "{isa} {what}");
                assert_eq!(
                    std::fs::read(&file).unwrap(),
                    good,
                    "{isa} {what}: rewritten"
                );
            }

            // a rewritten model file is another key; a budget of nothing
            // keeps only the newest file
            let t = std::time::SystemTime::now() + Duration::from_secs(5);
            std::fs::File::options()
                .append(true)
                .open(&path)
                .unwrap()
                .set_modified(t)
                .unwrap();
            let b = load(&PackedCache::in_dir(dir.join("packed"), 0));
            let PackedCacheStatus::Written {
                path: newer,
                replaced: None,
                ..
            } = b.packed_cache().clone()
            else {
                panic!("{isa}: after the model changed {:?}", b.packed_cache())
            };
            assert_ne!(newer, file);
            assert_eq!(cache_files(&dir.join("packed")), vec![newer], "{isa}");

            // a cache directory that cannot be made
            let blocked = PackedCache::in_dir(path.join("packed"), 1 << 30);
            let mut b = load(&blocked);
            assert!(
                matches!(b.packed_cache(), PackedCacheStatus::WriteFailed { .. }),
                "{isa}: {:?}",
                b.packed_cache()
            );
            assert_eq!(bits(&logits(&mut b)), want, "{isa} unwritable cache");
        }
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn the_parallel_crc_is_the_sequential_one() {
        let b: Vec<u8> = (0..(9 << 20) + 123)
            .map(|i: usize| (i * 7 + i / 3) as u8)
            .collect();
        for threads in [1, 2, 3, 5] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            for n in [0, 1, 4 << 20, (4 << 20) + 1, b.len()] {
                let parallel = pool.install(|| crc32_parallel(&b[..n]));
                assert_eq!(parallel, crc32fast::hash(&b[..n]), "{threads} threads, {n}");
            }
        }
    }

    /// Weights that are not the file's bytes have no key: packed, never
    /// cached.
    #[test]
    fn a_model_built_in_memory_is_not_cached() {
        let Some(kernels) = available_isas()
            .into_iter()
            .map(|i| table_for(i).unwrap())
            .find(|t| PackedMatrix::packed_len(t, DType::Q8_0, 16, 128).is_some())
        else {
            return;
        };
        let dir = std::env::temp_dir().join(format!("sotto-packed-mem-{}", std::process::id()));
        let path = model_file(&dir);
        let bytes = std::fs::read(&path).unwrap();
        let model = Model::from_gguf(sotto_models::GgufFile::from_bytes(bytes).unwrap()).unwrap();
        let cache = PackedCache::in_dir(dir.join("packed"), 1 << 30);
        let b = CpuBackend::with_kernels_and_cache(Arc::new(model), 1, kernels, &cache).unwrap();
        assert!(matches!(
            b.packed_cache(),
            PackedCacheStatus::NotCacheable { .. }
        ));
        assert!(cache_files(&dir.join("packed")).is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
