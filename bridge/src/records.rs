//! The device's state as a map of small records (one per peer identity,
//! session, prekey, conversation, turn, outgoing reply), changed in
//! transactions: every change of a transaction is kept in memory with
//! what it replaced, and `commit` makes them durable together (in the
//! sealed [`RecordDir`], when there is one) or `rollback` undoes them.
//! A commit writes only the records the transaction changed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::record_dir::RecordDir;
use crate::sealed::StorageKey;

/// What a record is; part of its file tag and associated data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub(crate) enum RecordKind {
    /// The device's own identity key pair and registration id.
    Identity = 1,
    /// The identity key a peer is trusted with.
    PeerIdentity = 2,
    /// A peer's session record (current and archived ratchet states).
    Session = 3,
    PreKey = 4,
    SignedPreKey = 5,
    /// Prekey id counters and the current signed prekey.
    PreKeyState = 6,
    /// A conversation's turn range.
    Conversation = 7,
    /// One user message and, once answered, its reply.
    Turn = 8,
    /// A reply envelope not yet acknowledged by the transport.
    Outbox = 9,
}

impl RecordKind {
    pub(crate) const ALL: [RecordKind; 9] = [
        Self::Identity,
        Self::PeerIdentity,
        Self::Session,
        Self::PreKey,
        Self::SignedPreKey,
        Self::PreKeyState,
        Self::Conversation,
        Self::Turn,
        Self::Outbox,
    ];

    pub(crate) fn from_u8(v: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|k| *k as u8 == v)
    }
}

/// A record's identity: its kind and a name unique within the kind.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct RecordKey {
    pub kind: RecordKind,
    pub name: Vec<u8>,
}

impl RecordKey {
    pub(crate) fn new(kind: RecordKind, name: impl Into<Vec<u8>>) -> Self {
        Self {
            kind,
            name: name.into(),
        }
    }
}

/// A change to one record: its new bytes, or `None` to delete it.
pub(crate) type RecordChange<'a> = (&'a RecordKey, Option<&'a [u8]>);

/// Called at named points of a commit (`store:records-written`,
/// `store:committed`) and of the pipeline; tests use it to kill the process
/// at an exact step.
pub type StepHook = std::sync::Arc<dyn Fn(&str) + Send + Sync>;

#[derive(Default)]
struct Transaction {
    /// What each touched record held before the transaction, in touch order.
    undo: Vec<(RecordKey, Option<Zeroizing<Vec<u8>>>)>,
    touched: BTreeSet<RecordKey>,
}

pub(crate) struct RecordStore {
    live: BTreeMap<RecordKey, Zeroizing<Vec<u8>>>,
    tx: Option<Transaction>,
    dir: Option<RecordDir>,
}

impl std::fmt::Debug for RecordStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordStore")
            .field("records", &self.live.len())
            .field("in_transaction", &self.tx.is_some())
            .field("dir", &self.dir)
            .finish()
    }
}

impl RecordStore {
    pub(crate) fn in_memory() -> Self {
        Self {
            live: BTreeMap::new(),
            tx: None,
            dir: None,
        }
    }

    /// Opens (or creates, when `dir` holds no store) the sealed record
    /// directory and loads every record, verified. Returns whether it was
    /// created.
    pub(crate) fn open(
        dir: &Path,
        key: &StorageKey,
        hook: Option<StepHook>,
    ) -> Result<(Self, bool)> {
        let (dir, live, created) = RecordDir::open(dir, key, hook)?;
        Ok((
            Self {
                live,
                tx: None,
                dir: Some(dir),
            },
            created,
        ))
    }

    pub(crate) fn dir(&self) -> Option<&RecordDir> {
        self.dir.as_ref()
    }

    pub(crate) fn get(&self, key: &RecordKey) -> Option<&[u8]> {
        self.live.get(key).map(|v| v.as_slice())
    }

    /// Records of `kind` whose name starts with `prefix`, in name order.
    pub(crate) fn scan(
        &self,
        kind: RecordKind,
        prefix: impl Into<Vec<u8>>,
    ) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        let prefix = prefix.into();
        self.live
            .range(RecordKey::new(kind, prefix.clone())..)
            .take_while(move |(k, _)| k.kind == kind && k.name.starts_with(&prefix))
            .map(|(k, v)| (k.name.as_slice(), v.as_slice()))
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    pub(crate) fn count(&self, kind: RecordKind) -> usize {
        self.scan(kind, Vec::new()).count()
    }

    pub(crate) fn begin(&mut self) -> Result<()> {
        if self.tx.is_some() {
            return Err(Error::Store("a transaction is already open".into()));
        }
        self.tx = Some(Transaction::default());
        Ok(())
    }

    pub(crate) fn put(
        &mut self,
        key: RecordKey,
        bytes: impl Into<Zeroizing<Vec<u8>>>,
    ) -> Result<()> {
        self.change(key, Some(bytes.into()))
    }

    pub(crate) fn delete(&mut self, key: RecordKey) -> Result<()> {
        if !self.live.contains_key(&key) {
            return Ok(());
        }
        self.change(key, None)
    }

    /// Outside a transaction a change commits on its own.
    fn change(&mut self, key: RecordKey, value: Option<Zeroizing<Vec<u8>>>) -> Result<()> {
        let implicit = self.tx.is_none();
        if implicit {
            self.begin()?;
        }
        if let Some(tx) = self.tx.as_mut() {
            if tx.touched.insert(key.clone()) {
                tx.undo.push((key.clone(), self.live.get(&key).cloned()));
            }
        }
        match value {
            Some(v) => {
                self.live.insert(key, v);
            }
            None => {
                self.live.remove(&key);
            }
        }
        if implicit {
            self.commit()?;
        }
        Ok(())
    }

    /// Makes the transaction's changes durable together; on failure they
    /// are undone in memory too, so memory never runs ahead of the disk.
    pub(crate) fn commit(&mut self) -> Result<()> {
        let Some(tx) = self.tx.take() else {
            return Ok(());
        };
        let Some(dir) = self.dir.as_mut() else {
            return Ok(());
        };
        // Records changed and changed back still count: the log says so.
        let changes: Vec<RecordChange<'_>> = tx
            .touched
            .iter()
            .map(|k| (k, self.live.get(k).map(|v| v.as_slice())))
            .collect();
        if changes.is_empty() {
            return Ok(());
        }
        match dir.commit(&changes) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.undo(tx);
                Err(e)
            }
        }
    }

    pub(crate) fn rollback(&mut self) {
        if let Some(tx) = self.tx.take() {
            self.undo(tx);
        }
    }

    fn undo(&mut self, tx: Transaction) {
        for (key, old) in tx.undo.into_iter().rev() {
            match old {
                Some(v) => {
                    self.live.insert(key, v);
                }
                None => {
                    self.live.remove(&key);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> RecordKey {
        RecordKey::new(RecordKind::Session, name.as_bytes().to_vec())
    }

    #[test]
    fn rollback_restores_every_touched_record() {
        let mut store = RecordStore::in_memory();
        assert!(store.put(key("a"), b"a0".to_vec()).is_ok());
        assert!(store.begin().is_ok());
        assert!(store.put(key("a"), b"a1".to_vec()).is_ok());
        assert!(store.put(key("a"), b"a2".to_vec()).is_ok());
        assert!(store.put(key("b"), b"b1".to_vec()).is_ok());
        assert!(store.begin().is_err(), "no nested transactions");
        store.rollback();
        assert_eq!(store.get(&key("a")), Some(&b"a0"[..]));
        assert_eq!(store.get(&key("b")), None);
        assert!(store.begin().is_ok(), "the transaction was closed");
    }

    #[test]
    fn scan_stays_within_kind_and_prefix() {
        let mut store = RecordStore::in_memory();
        for name in ["ab1", "ab2", "ac", "a"] {
            assert!(store.put(key(name), name.as_bytes().to_vec()).is_ok());
        }
        assert!(store
            .put(RecordKey::new(RecordKind::Turn, b"ab3".to_vec()), vec![])
            .is_ok());
        let names: Vec<&[u8]> = store
            .scan(RecordKind::Session, b"ab".to_vec())
            .map(|(n, _)| n)
            .collect();
        assert_eq!(names, vec![&b"ab1"[..], &b"ab2"[..]]);
        assert_eq!(store.count(RecordKind::Session), 4);
        assert_eq!(store.count(RecordKind::Turn), 1);
    }
}
