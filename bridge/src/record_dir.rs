//! The sealed record directory: what survives a crash, and what is
//! checked when it is read back.
//!
//! ```text
//! DIR/lock                   flock'ed while open: one process per directory
//! DIR/log                    header || entries: len u32 LE || seq u64 LE || sealed entry
//! DIR/records/<tag>.<gen>    header(kind, tag, gen) || sealed record
//! ```
//!
//! A record's file is named by a keyed tag of its kind and name (peer
//! addresses do not show) and the generation that wrote it: the sequence
//! number of the commit. Files are never rewritten in place. A commit
//! writes the new generation's files (fsynced, then the directory), then
//! appends one sealed log entry naming every record it wrote or deleted
//! (fsynced): that append is the commit point, so the records of one
//! transaction change together or not at all. Superseded files are
//! unlinked afterwards (leftovers of a crash are removed at open). The
//! log is rewritten as one checkpoint entry (the whole generation table)
//! when it grows past twice the table, so a commit costs O(records it
//! changed) amortized.
//!
//! Threat model. The attacker can read and write the directory but does
//! not have the storage key. Everything is sealed (XChaCha20-Poly1305);
//! a record's associated data is the store id, its kind, its name and its
//! generation, and a log entry's is the store id, its sequence number and
//! a hash chain over the entries before it. On open:
//! - a record file that is missing is [`Error::StoreRecordMissing`];
//! - a file holding another record (two swapped, one moved) is
//!   [`Error::StoreRecordMismatch`];
//! - an older generation of a record in place of the current one, or
//!   record files newer than the log (an older log restored), is
//!   [`Error::StoreRollback`];
//! - a log entry changed, removed from the middle or reordered, or any
//!   sealed byte changed, is [`Error::StoreDecrypt`].
//!
//! Not detected: a consistent rollback of the whole directory (every file
//! restored from the same earlier moment), or of exactly the last commit
//! when its superseded files are restored too; both are indistinguishable
//! from a device restored from a backup. Detecting them needs a monotonic
//! counter kept outside the directory (a hardware-backed one on phones),
//! compared with [`RecordDir::sequence`].

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use prost::Message as _;
use rand_core::{OsRng, RngCore};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::records::{RecordChange, RecordKey, RecordKind, StepHook};
use crate::sealed::{
    io_error, sync_dir, write_file_atomically, write_new_file, Sealer, StorageKey, SEAL_OVERHEAD,
    TAG_LEN,
};

const LOG_FILE: &str = "log";
const RECORDS_DIR: &str = "records";
const LOCK_FILE: &str = "lock";
const LOG_MAGIC: &[u8; 8] = b"SOTTOLOG";
const RECORD_MAGIC: &[u8; 8] = b"SOTTOREC";
const FORMAT_VERSION: u8 = 2;
const STORE_ID_LEN: usize = 16;
/// magic || version || store id
const LOG_HEADER_LEN: usize = 8 + 1 + STORE_ID_LEN;
/// len u32 || seq u64
const FRAME_HEADER_LEN: usize = 4 + 8;
/// magic || version || kind || tag || generation u64
const RECORD_HEADER_LEN: usize = 8 + 1 + 1 + TAG_LEN + 8;
/// A log entry larger than this is corruption, not a record (records are
/// bounded far below by [`crate::Limits`]).
const MAX_ENTRY_LEN: usize = 256 << 20;
/// The log is compacted when it holds more entries than this, or than
/// twice the records alive, whichever is larger.
const MIN_ENTRIES_BEFORE_CHECKPOINT: usize = 1024;
/// Files of the single-snapshot format this one replaced.
const OLD_FORMAT_FILES: [&str; 2] = ["protocol.sealed", "conversations.sealed"];

#[derive(Clone, PartialEq, prost::Message)]
struct LogOpProto {
    #[prost(uint32, tag = "1")]
    kind: u32,
    #[prost(bytes = "vec", tag = "2")]
    name: Vec<u8>,
    /// 0 = deleted.
    #[prost(uint64, tag = "3")]
    generation: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct LogEntryProto {
    /// The whole generation table (the first entry of a log), or the
    /// changes of one commit.
    #[prost(bool, tag = "1")]
    checkpoint: bool,
    #[prost(message, repeated, tag = "2")]
    ops: Vec<LogOpProto>,
}

/// The durable side of a [`crate::records::RecordStore`].
pub(crate) struct RecordDir {
    root: PathBuf,
    records: PathBuf,
    sealer: Sealer,
    log_header: [u8; LOG_HEADER_LEN],
    log: fs::File,
    log_len: u64,
    /// Sequence number of the last commit (the newest generation).
    last_seq: u64,
    /// Hash over every entry of the current log so far.
    chain: [u8; 32],
    /// The committed generation of every live record.
    generations: HashMap<RecordKey, u64>,
    entries: usize,
    /// Compact the log past this many entries (or twice the records).
    checkpoint_after: usize,
    /// Set when a failed append could not be cut off the log again: the
    /// next append would follow garbage, so no more commits.
    poisoned: bool,
    hook: Option<StepHook>,
    _lock: fs::File,
}

impl std::fmt::Debug for RecordDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordDir")
            .field("root", &self.root)
            .field("sequence", &self.last_seq)
            .field("records", &self.generations.len())
            .finish_non_exhaustive()
    }
}

fn path_str(p: &Path) -> String {
    p.display().to_string()
}

fn corrupt(path: &Path) -> Error {
    Error::StoreDecrypt {
        path: path_str(path),
    }
}

fn record_file_name(tag: &[u8; TAG_LEN], generation: u64) -> String {
    let mut s = String::with_capacity(2 * TAG_LEN + 21);
    for b in tag {
        s.push_str(&format!("{b:02x}"));
    }
    s.push('.');
    s.push_str(&generation.to_string());
    s
}

fn parse_record_file_name(name: &str) -> Option<([u8; TAG_LEN], u64)> {
    let (hex, generation) = name.split_once('.')?;
    if hex.len() != 2 * TAG_LEN {
        return None;
    }
    let mut tag = [0u8; TAG_LEN];
    for (i, byte) in tag.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some((tag, generation.parse().ok()?))
}

fn chain_step(chain: &[u8; 32], sealed: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(chain);
    h.update(sealed);
    h.finalize().into()
}

fn entry_aad(log_header: &[u8], seq: u64, chain: &[u8; 32]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(LOG_HEADER_LEN + 8 + 32);
    aad.extend_from_slice(log_header);
    aad.extend_from_slice(&seq.to_le_bytes());
    aad.extend_from_slice(chain);
    aad
}

#[cfg(unix)]
fn lock_exclusively(file: &fs::File, path: &Path) -> Result<()> {
    use rustix::fs::{flock, FlockOperation};
    flock(file, FlockOperation::NonBlockingLockExclusive).map_err(|e| {
        if e == rustix::io::Errno::WOULDBLOCK {
            Error::StoreLocked {
                path: path_str(path),
            }
        } else {
            io_error(path, e.into())
        }
    })
}

#[cfg(not(unix))]
fn lock_exclusively(_file: &fs::File, _path: &Path) -> Result<()> {
    Ok(())
}

/// Every live record, as loaded.
pub(crate) type LiveRecords = BTreeMap<RecordKey, Zeroizing<Vec<u8>>>;

/// What one record file holds once verified.
struct RecordFile {
    path: PathBuf,
    generation: u64,
}

impl RecordDir {
    /// Opens `root` (created when it holds no store yet), replays the log
    /// and verifies every record against it. Returns the live records and
    /// whether the store was created.
    pub(crate) fn open(
        root: &Path,
        key: &StorageKey,
        hook: Option<StepHook>,
    ) -> Result<(Self, LiveRecords, bool)> {
        fs::create_dir_all(root).map_err(|e| io_error(root, e))?;
        let lock_path = root.join(LOCK_FILE);
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| io_error(&lock_path, e))?;
        lock_exclusively(&lock, root)?;
        let records = root.join(RECORDS_DIR);
        let log_path = root.join(LOG_FILE);
        let sealer = Sealer::new(key);

        let created = match fs::metadata(&log_path) {
            Ok(_) => false,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Self::refuse_to_create_over(root, &records)?;
                fs::create_dir_all(&records).map_err(|e| io_error(&records, e))?;
                sync_dir(root)?;
                let mut store_id = [0u8; STORE_ID_LEN];
                OsRng.fill_bytes(&mut store_id);
                let header = log_header(&store_id);
                let log = checkpoint_log(&sealer, &header, 0, &HashMap::new())?;
                write_file_atomically(&log_path, &log)?;
                true
            }
            Err(e) => return Err(io_error(&log_path, e)),
        };
        fs::create_dir_all(&records).map_err(|e| io_error(&records, e))?;

        let replay = replay_log(&sealer, &log_path)?;
        let mut log = fs::OpenOptions::new()
            .read(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| io_error(&log_path, e))?;
        if replay.valid_len < replay.file_len {
            // A torn last entry: the append that a crash interrupted was
            // never acknowledged, so dropping it loses nothing.
            log.set_len(replay.valid_len)
                .and_then(|()| log.sync_all())
                .map_err(|e| io_error(&log_path, e))?;
        }
        log.flush().map_err(|e| io_error(&log_path, e))?;

        let mut dir = Self {
            root: root.to_path_buf(),
            records,
            sealer,
            log_header: replay.header,
            log,
            log_len: replay.valid_len,
            last_seq: replay.last_seq,
            chain: replay.chain,
            generations: replay.generations,
            entries: replay.entries,
            checkpoint_after: MIN_ENTRIES_BEFORE_CHECKPOINT,
            poisoned: false,
            hook,
            _lock: lock,
        };
        let live = dir.load_records()?;
        Ok((dir, live, created))
    }

    /// A store is only ever created in a directory that has none: record
    /// files without their log mean the log was lost, not a new device.
    fn refuse_to_create_over(root: &Path, records: &Path) -> Result<()> {
        for old in OLD_FORMAT_FILES {
            if root.join(old).exists() {
                return Err(Error::Store(format!(
                    "{} holds the single-snapshot store format ({old}), which this version no longer reads",
                    root.display()
                )));
            }
        }
        let has_records = fs::read_dir(records)
            .map(|mut d| d.next().is_some())
            .unwrap_or(false);
        if has_records {
            return Err(Error::StoreRecordMissing {
                path: path_str(&root.join(LOG_FILE)),
            });
        }
        Ok(())
    }

    /// The sequence number of the last commit: it only grows. An
    /// application with a monotonic counter outside this directory can
    /// compare the two to detect a whole-directory rollback.
    pub(crate) fn sequence(&self) -> u64 {
        self.last_seq
    }

    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    fn step(&self, name: &str) {
        if let Some(hook) = &self.hook {
            hook(name);
        }
    }

    fn tag(&self, key: &RecordKey) -> [u8; TAG_LEN] {
        self.sealer.tag(key.kind as u8, &key.name)
    }

    fn record_path(&self, key: &RecordKey, generation: u64) -> PathBuf {
        self.records
            .join(record_file_name(&self.tag(key), generation))
    }

    fn record_aad(&self, header: &[u8], name: &[u8]) -> Vec<u8> {
        let mut aad = Vec::with_capacity(STORE_ID_LEN + RECORD_HEADER_LEN + name.len());
        aad.extend_from_slice(&self.log_header[9..]);
        aad.extend_from_slice(header);
        aad.extend_from_slice(name);
        aad
    }

    fn seal_record(&self, key: &RecordKey, generation: u64, bytes: &[u8]) -> Result<Vec<u8>> {
        let mut header = Vec::with_capacity(RECORD_HEADER_LEN + bytes.len() + SEAL_OVERHEAD);
        header.extend_from_slice(RECORD_MAGIC);
        header.push(FORMAT_VERSION);
        header.push(key.kind as u8);
        header.extend_from_slice(&self.tag(key));
        header.extend_from_slice(&generation.to_le_bytes());
        let sealed = self
            .sealer
            .seal(&self.record_aad(&header, &key.name), bytes)?;
        header.extend_from_slice(&sealed);
        Ok(header)
    }

    fn open_record(
        &self,
        key: &RecordKey,
        file: &RecordFile,
        expected: u64,
    ) -> Result<Zeroizing<Vec<u8>>> {
        let path = &file.path;
        let bytes = fs::read(path).map_err(|e| io_error(path, e))?;
        if bytes.len() < RECORD_HEADER_LEN + SEAL_OVERHEAD || &bytes[..8] != RECORD_MAGIC {
            return Err(corrupt(path));
        }
        if bytes[8] != FORMAT_VERSION {
            return Err(Error::SnapshotVersion {
                path: path_str(path),
                version: bytes[8],
            });
        }
        let (header, sealed) = bytes.split_at(RECORD_HEADER_LEN);
        if header[9] != key.kind as u8 || header[10..10 + TAG_LEN] != self.tag(key) {
            return Err(Error::StoreRecordMismatch {
                path: path_str(path),
            });
        }
        let mut generation = [0u8; 8];
        generation.copy_from_slice(&header[10 + TAG_LEN..]);
        let generation = u64::from_le_bytes(generation);
        if generation != expected || file.generation != expected {
            return Err(Error::StoreRollback {
                path: path_str(path),
                found: generation.min(file.generation),
                expected,
            });
        }
        self.sealer
            .open(&self.record_aad(header, &key.name), sealed)
            .ok_or_else(|| corrupt(path))
    }

    /// Reads every record the log says is alive and checks the directory
    /// against the log; removes what crashes left behind.
    fn load_records(&mut self) -> Result<LiveRecords> {
        let mut files: HashMap<[u8; TAG_LEN], Vec<u64>> = HashMap::new();
        let listing = fs::read_dir(&self.records).map_err(|e| io_error(&self.records, e))?;
        for entry in listing {
            let entry = entry.map_err(|e| io_error(&self.records, e))?;
            let name = entry.file_name();
            let Some((tag, generation)) = name.to_str().and_then(parse_record_file_name) else {
                continue;
            };
            if generation > self.last_seq + 1 {
                // Written by a commit the log does not have: the log is
                // older than the records.
                return Err(Error::StoreRollback {
                    path: path_str(&self.root.join(LOG_FILE)),
                    found: self.last_seq,
                    expected: generation,
                });
            }
            files.entry(tag).or_default().push(generation);
        }

        let mut live = BTreeMap::new();
        for (key, &generation) in &self.generations {
            let tag = self.tag(key);
            let present = files.get(&tag).map(Vec::as_slice).unwrap_or(&[]);
            let path = self.record_path(key, generation);
            if !present.contains(&generation) {
                return Err(match present.iter().filter(|g| **g < generation).max() {
                    Some(&older) => Error::StoreRollback {
                        path: path_str(&path),
                        found: older,
                        expected: generation,
                    },
                    None => Error::StoreRecordMissing {
                        path: path_str(&path),
                    },
                });
            }
            let file = RecordFile { path, generation };
            live.insert(key.clone(), self.open_record(key, &file, generation)?);
        }

        // Leftovers: files of the commit a crash interrupted, and files a
        // commit superseded but had not unlinked yet.
        let wanted: HashMap<[u8; TAG_LEN], u64> = self
            .generations
            .iter()
            .map(|(k, g)| (self.tag(k), *g))
            .collect();
        for (tag, generations) in &files {
            for &g in generations {
                if wanted.get(tag) != Some(&g) {
                    let stale = self.records.join(record_file_name(tag, g));
                    fs::remove_file(&stale).map_err(|e| io_error(&stale, e))?;
                }
            }
        }
        Ok(live)
    }

    /// Commits `changes` (new bytes, or `None` to delete) together.
    pub(crate) fn commit(&mut self, changes: &[RecordChange<'_>]) -> Result<()> {
        if self.poisoned {
            return Err(Error::Store(
                "an earlier commit failed and the log could not be repaired: reopen the store"
                    .into(),
            ));
        }
        let seq = self.last_seq + 1;
        let mut written = Vec::new();
        let result = self.write_and_log(seq, changes, &mut written);
        if let Err(e) = result {
            for path in &written {
                let _ = fs::remove_file(path);
            }
            return Err(e);
        }
        self.step("store:committed");
        for (key, bytes) in changes {
            let old = match bytes {
                Some(_) => self.generations.insert((*key).clone(), seq),
                None => self.generations.remove(key),
            };
            if let Some(old) = old {
                // A leftover is harmless (removed at the next open).
                let _ = fs::remove_file(self.record_path(key, old));
            }
        }
        self.last_seq = seq;
        self.entries += 1;
        if self.entries > self.checkpoint_after.max(2 * self.generations.len()) {
            // The commit is durable already; a failed compaction leaves the
            // old log, which is still valid, and is retried next commit.
            let _ = self.checkpoint();
        }
        Ok(())
    }

    fn write_and_log(
        &mut self,
        seq: u64,
        changes: &[RecordChange<'_>],
        written: &mut Vec<PathBuf>,
    ) -> Result<()> {
        let mut ops = Vec::with_capacity(changes.len());
        for (key, bytes) in changes {
            match bytes {
                Some(bytes) => {
                    let path = self.record_path(key, seq);
                    let sealed = self.seal_record(key, seq, bytes)?;
                    write_new_file(&path, &sealed)?;
                    written.push(path);
                    ops.push(op(key, seq));
                }
                None if self.generations.contains_key(key) => ops.push(op(key, 0)),
                // Created and deleted within one transaction.
                None => {}
            }
        }
        if ops.is_empty() {
            return Ok(());
        }
        if !written.is_empty() {
            sync_dir(&self.records)?;
        }
        self.step("store:records-written");
        let entry = LogEntryProto {
            checkpoint: false,
            ops,
        };
        let plain = Zeroizing::new(entry.encode_to_vec());
        let sealed = self.sealer.seal(
            &entry_aad(&self.log_header, seq, &self.chain),
            plain.as_slice(),
        )?;
        let frame = frame(seq, &sealed)?;
        let log_path = self.root.join(LOG_FILE);
        let appended = self
            .log
            .write_all(&frame)
            .and_then(|()| self.log.sync_data());
        if let Err(e) = appended {
            let repaired = self
                .log
                .set_len(self.log_len)
                .and_then(|()| self.log.sync_all());
            self.poisoned = repaired.is_err();
            return Err(io_error(&log_path, e));
        }
        self.log_len += frame.len() as u64;
        self.chain = chain_step(&self.chain, &sealed);
        Ok(())
    }

    /// Rewrites the log as one entry: the generation table.
    fn checkpoint(&mut self) -> Result<()> {
        let log_path = self.root.join(LOG_FILE);
        let bytes = checkpoint_log(
            &self.sealer,
            &self.log_header,
            self.last_seq,
            &self.generations,
        )?;
        write_file_atomically(&log_path, &bytes)?;
        self.log = fs::OpenOptions::new()
            .read(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| io_error(&log_path, e))?;
        self.log_len = bytes.len() as u64;
        self.chain = chain_step(
            &initial_chain(&self.log_header),
            &bytes[LOG_HEADER_LEN + FRAME_HEADER_LEN..],
        );
        self.entries = 1;
        Ok(())
    }
}

fn op(key: &RecordKey, generation: u64) -> LogOpProto {
    LogOpProto {
        kind: key.kind as u32,
        name: key.name.clone(),
        generation,
    }
}

fn log_header(store_id: &[u8; STORE_ID_LEN]) -> [u8; LOG_HEADER_LEN] {
    let mut h = [0u8; LOG_HEADER_LEN];
    h[..8].copy_from_slice(LOG_MAGIC);
    h[8] = FORMAT_VERSION;
    h[9..].copy_from_slice(store_id);
    h
}

fn initial_chain(header: &[u8]) -> [u8; 32] {
    Sha256::digest(header).into()
}

fn frame(seq: u64, sealed: &[u8]) -> Result<Vec<u8>> {
    let len = u32::try_from(sealed.len())
        .ok()
        .filter(|l| (*l as usize) <= MAX_ENTRY_LEN)
        .ok_or_else(|| Error::Store(format!("log entry of {} bytes", sealed.len())))?;
    let mut out = Vec::with_capacity(FRAME_HEADER_LEN + sealed.len());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(sealed);
    Ok(out)
}

/// A whole log file: the header and one checkpoint entry.
fn checkpoint_log(
    sealer: &Sealer,
    header: &[u8; LOG_HEADER_LEN],
    seq: u64,
    generations: &HashMap<RecordKey, u64>,
) -> Result<Vec<u8>> {
    let mut ops: Vec<LogOpProto> = generations.iter().map(|(k, g)| op(k, *g)).collect();
    ops.sort_by(|a, b| (a.kind, &a.name).cmp(&(b.kind, &b.name)));
    let entry = LogEntryProto {
        checkpoint: true,
        ops,
    };
    let plain = Zeroizing::new(entry.encode_to_vec());
    let sealed = sealer.seal(
        &entry_aad(header, seq, &initial_chain(header)),
        plain.as_slice(),
    )?;
    let mut out = header.to_vec();
    out.extend_from_slice(&frame(seq, &sealed)?);
    Ok(out)
}

struct Replay {
    header: [u8; LOG_HEADER_LEN],
    generations: HashMap<RecordKey, u64>,
    last_seq: u64,
    chain: [u8; 32],
    entries: usize,
    valid_len: u64,
    file_len: u64,
}

fn replay_log(sealer: &Sealer, path: &Path) -> Result<Replay> {
    let mut bytes = Vec::new();
    fs::File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|e| io_error(path, e))?;
    if bytes.len() < LOG_HEADER_LEN || &bytes[..8] != LOG_MAGIC {
        return Err(corrupt(path));
    }
    if bytes[8] != FORMAT_VERSION {
        return Err(Error::SnapshotVersion {
            path: path_str(path),
            version: bytes[8],
        });
    }
    let mut header = [0u8; LOG_HEADER_LEN];
    header.copy_from_slice(&bytes[..LOG_HEADER_LEN]);
    let mut replay = Replay {
        header,
        generations: HashMap::new(),
        last_seq: 0,
        chain: initial_chain(&header),
        entries: 0,
        valid_len: LOG_HEADER_LEN as u64,
        file_len: bytes.len() as u64,
    };
    let mut pos = LOG_HEADER_LEN;
    while pos < bytes.len() {
        let rest = &bytes[pos..];
        if rest.len() < FRAME_HEADER_LEN {
            break;
        }
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let mut seq = [0u8; 8];
        seq.copy_from_slice(&rest[4..12]);
        let seq = u64::from_le_bytes(seq);
        let Some(sealed) = rest.get(FRAME_HEADER_LEN..FRAME_HEADER_LEN + len) else {
            break;
        };
        let is_last = pos + FRAME_HEADER_LEN + len == bytes.len();
        let first = replay.entries == 0;
        if !first && seq != replay.last_seq + 1 {
            return Err(corrupt(path));
        }
        let Some(plain) = sealer.open(&entry_aad(&header, seq, &replay.chain), sealed) else {
            if is_last && !first {
                // Torn by a crash during the append that was its commit.
                break;
            }
            return Err(corrupt(path));
        };
        let entry = LogEntryProto::decode(plain.as_slice()).map_err(|_| corrupt(path))?;
        if entry.checkpoint != first {
            return Err(corrupt(path));
        }
        for o in entry.ops {
            let kind = RecordKind::from_u8(u8::try_from(o.kind).unwrap_or(0))
                .ok_or_else(|| corrupt(path))?;
            let key = RecordKey::new(kind, o.name);
            if o.generation == 0 {
                replay.generations.remove(&key);
            } else if o.generation > seq {
                return Err(corrupt(path));
            } else {
                replay.generations.insert(key, o.generation);
            }
        }
        replay.chain = chain_step(&replay.chain, sealed);
        replay.last_seq = seq;
        replay.entries += 1;
        pos += FRAME_HEADER_LEN + len;
        replay.valid_len = pos as u64;
    }
    if replay.entries == 0 {
        // The log is created whole (atomic replace): no checkpoint is
        // damage, not a crash.
        return Err(corrupt(path));
    }
    Ok(replay)
}

#[cfg(test)]
#[allow(clippy::panic)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("sotto-record-dir-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    fn key(kind: RecordKind, name: &str) -> RecordKey {
        RecordKey::new(kind, name.as_bytes().to_vec())
    }

    fn open(dir: &Path) -> Result<(RecordDir, LiveRecords, bool)> {
        RecordDir::open(dir, &StorageKey::from_bytes([9; 32]), None)
    }

    fn texts(live: &LiveRecords) -> Vec<(String, String)> {
        live.iter()
            .map(|(k, v)| {
                (
                    String::from_utf8_lossy(&k.name).into_owned(),
                    String::from_utf8_lossy(v).into_owned(),
                )
            })
            .collect()
    }

    #[test]
    fn commits_replay_and_checkpoint() {
        let root = temp_dir("replay");
        let a = key(RecordKind::Session, "a");
        let b = key(RecordKind::Session, "b");
        {
            let (mut dir, live, created) = open(&root).unwrap_or_else(|e| panic!("{e}"));
            assert!(created && live.is_empty());
            dir.checkpoint_after = 16;
            for i in 0..100u32 {
                let text = format!("a{i}");
                let mut changes: Vec<RecordChange<'_>> = vec![(&a, Some(text.as_bytes()))];
                if i == 5 {
                    changes.push((&b, Some(b"b")));
                }
                if i == 99 {
                    changes.push((&b, None));
                }
                dir.commit(&changes).unwrap_or_else(|e| panic!("{e}"));
            }
            assert_eq!(dir.sequence(), 100);
            assert!(dir.entries < 17, "the log was compacted");
            let files = fs::read_dir(root.join(RECORDS_DIR))
                .map(|d| d.count())
                .unwrap_or(0);
            assert_eq!(files, 1, "superseded files are unlinked");
        }
        let (dir, live, created) = open(&root).unwrap_or_else(|e| panic!("{e}"));
        assert!(!created);
        assert_eq!(dir.sequence(), 100);
        assert_eq!(texts(&live), vec![("a".into(), "a99".into())]);
        drop(dir);
        let _ = fs::remove_dir_all(&root);
    }

    #[test]
    fn second_opener_is_refused_while_the_first_holds_the_lock() {
        let root = temp_dir("lock");
        let first = open(&root).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(open(&root), Err(Error::StoreLocked { .. })));
        drop(first);
        assert!(open(&root).is_ok());
        let _ = fs::remove_dir_all(&root);
    }

    #[test]
    fn torn_log_tail_and_uncommitted_files_are_dropped() {
        let root = temp_dir("torn");
        let a = key(RecordKind::Turn, "a");
        {
            let (mut dir, _, _) = open(&root).unwrap_or_else(|e| panic!("{e}"));
            dir.commit(&[(&a, Some(b"one"))])
                .unwrap_or_else(|e| panic!("{e}"));
            // A crash after the records of commit 2 were written but
            // before its log entry: a file of generation 2 and half an entry.
            let path = dir.record_path(&a, 2);
            let sealed = dir.seal_record(&a, 2, b"two").unwrap_or_default();
            fs::write(path, sealed).unwrap_or_else(|e| panic!("{e}"));
            let mut log = fs::OpenOptions::new()
                .append(true)
                .open(root.join(LOG_FILE))
                .unwrap_or_else(|e| panic!("{e}"));
            log.write_all(&[40, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3])
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let (mut dir, live, _) = open(&root).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(texts(&live), vec![("a".into(), "one".into())]);
        assert_eq!(dir.sequence(), 1);
        dir.commit(&[(&a, Some(b"three"))])
            .unwrap_or_else(|e| panic!("{e}"));
        drop(dir);
        let (_, live, _) = open(&root).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(texts(&live), vec![("a".into(), "three".into())]);
        let _ = fs::remove_dir_all(&root);
    }

    #[test]
    fn file_names_round_trip() {
        let tag = [0xa5; TAG_LEN];
        let name = record_file_name(&tag, 77);
        assert_eq!(parse_record_file_name(&name), Some((tag, 77)));
        assert_eq!(parse_record_file_name("zz.1"), None);
        assert_eq!(parse_record_file_name(&format!("{}x", &name)), None);
    }
}
