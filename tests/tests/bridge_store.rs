//! The sealed device store (bridge/src/record_dir.rs): persistence across
//! reopen, one commit per message holding exactly the records it changed,
//! and every tampering a typed error on open (a record deleted, two
//! swapped, an older one restored, an older log restored, a flipped bit),
//! never a silent new identity or an empty history; a writer SIGKILLed
//! mid-commit leaves the last committed state.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::SystemTime;

use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use sotto_bridge::{
    AssistantDevice, DeviceOptions, Error, IdentityKeyStore, PreKeyStore, StorageKey,
};
use sotto_tests::bridge_user::{BridgeUser, EchoAssistant};

fn key(b: u8) -> StorageKey {
    StorageKey::from_bytes([b; 32])
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sotto-store-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn open(dir: &Path, k: u8) -> sotto_bridge::Result<AssistantDevice> {
    AssistantDevice::open(
        dir,
        &key(k),
        DeviceOptions::default(),
        &mut ChaCha20Rng::seed_from_u64(1),
    )
}

/// Every file of a state directory (relative path -> bytes), lock excluded.
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for sub in ["", "records"] {
        for entry in std::fs::read_dir(dir.join(sub)).unwrap().flatten() {
            let path = entry.path();
            if path.is_file() && entry.file_name() != "lock" {
                let rel = path.strip_prefix(dir).unwrap().display().to_string();
                out.insert(rel, std::fs::read(&path).unwrap());
            }
        }
    }
    out
}

fn write_files(dir: &Path, files: &BTreeMap<String, Vec<u8>>) {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir.join("records")).unwrap();
    for (rel, bytes) in files {
        std::fs::write(dir.join(rel), bytes).unwrap();
    }
}

/// Record files by tag: tag -> (generation, file name).
fn record_tags(files: &BTreeMap<String, Vec<u8>>) -> BTreeMap<String, (u64, String)> {
    files
        .keys()
        .filter_map(|rel| {
            let name = rel.strip_prefix("records/")?;
            let (tag, generation) = name.split_once('.')?;
            Some((tag.to_string(), (generation.parse().ok()?, rel.clone())))
        })
        .collect()
}

/// A device with two users who each had `rounds` answered exchanges.
fn populated(dir: &Path, rounds: usize) -> (BridgeUser, BridgeUser) {
    let mut device = open(dir, 1).unwrap();
    let mut rng = ChaCha20Rng::seed_from_u64(2);
    let mut bot = EchoAssistant::default();
    let mut users = Vec::new();
    for (i, name) in ["alice", "bob"].iter().enumerate() {
        let bundle = device.prekey_bundle(SystemTime::now(), &mut rng).unwrap();
        users.push(BridgeUser::join(name, 10 + i as u64, &bundle));
    }
    for round in 0..rounds {
        for user in users.iter_mut() {
            let env = user.encrypt(&format!("{} round {round}", user.address.name));
            for reply in device
                .handle(&user.address.clone(), &env, &mut bot, &mut rng)
                .unwrap()
            {
                user.open(&reply);
                device.ack(&reply.turn).unwrap();
            }
        }
    }
    let bob = users.pop().unwrap();
    (users.pop().unwrap(), bob)
}

#[test]
fn state_survives_reopen_and_refuses_a_wrong_key() {
    let dir = temp_dir("reopen");
    let (mut alice, _bob) = populated(&dir, 2);
    let identity = open(&dir, 1).unwrap().identity_key();
    let mut device = open(&dir, 1).unwrap();
    assert_eq!(
        device.identity_key(),
        identity,
        "same identity after reopen"
    );
    assert_eq!(device.history(&alice.address).unwrap().len(), 4);
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let env = alice.encrypt("after reopen");
    let replies = device
        .handle(
            &alice.address.clone(),
            &env,
            &mut EchoAssistant::default(),
            &mut rng,
        )
        .unwrap();
    assert_eq!(
        alice.open(&replies[0]),
        "5 turns in alice.1; you said: after reopen"
    );
    drop(device);

    assert!(matches!(open(&dir, 2), Err(Error::StoreDecrypt { .. })));
    for (rel, bytes) in files(&dir) {
        for secret in [&b"alice"[..], b"round", b"you said", b"after reopen"] {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret),
                "{rel} holds plaintext"
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Bytes a change of the directory wrote: new files, and what the log grew.
fn written(
    before: &BTreeMap<String, Vec<u8>>,
    after: &BTreeMap<String, Vec<u8>>,
) -> (usize, usize) {
    let new: Vec<&String> = after.keys().filter(|k| !before.contains_key(*k)).collect();
    let bytes: usize = new.iter().map(|k| after[*k].len()).sum::<usize>()
        + after["log"].len().saturating_sub(before["log"].len());
    (new.len(), bytes)
}

#[test]
fn a_message_commits_only_the_records_it_changes() {
    let dir = temp_dir("cost");
    let mut device = open(&dir, 1).unwrap();
    let mut rng = ChaCha20Rng::seed_from_u64(4);
    let mut bot = EchoAssistant::default();
    let mut users: Vec<BridgeUser> = (0..24)
        .map(|i| {
            let bundle = device.prekey_bundle(SystemTime::now(), &mut rng).unwrap();
            BridgeUser::join(&format!("user{i}"), 100 + i, &bundle)
        })
        .collect();
    let mut exchange = |device: &mut AssistantDevice, user: &mut BridgeUser, text: &str| {
        let env = user.encrypt(text);
        let before = device.sequence().unwrap();
        let received = device
            .receive(&user.address.clone(), &env, &mut rng)
            .unwrap();
        assert_eq!(
            device.sequence(),
            Some(before + 1),
            "decrypt + journal: one commit"
        );
        let reply = device.answer_next(&mut bot).unwrap().unwrap();
        assert_eq!(reply.turn, received.turn);
        user.open(&reply);
        device.ack(&reply.turn).unwrap();
        assert_eq!(
            device.sequence(),
            Some(before + 3),
            "reply, then ack: one commit each"
        );
    };
    // Warm up the first user's session so both measured messages are
    // ordinary ones (not a session's first).
    for round in 0..2 {
        exchange(&mut device, &mut users[0], &format!("warm-up {round}"));
    }
    let before = files(&dir);
    exchange(&mut device, &mut users[0], "measured while alone");
    let (files_small, bytes_small) = written(&before, &files(&dir));

    // Now 23 more conversations and a long history for the first user.
    for (i, user) in users.iter_mut().enumerate().skip(1) {
        exchange(&mut device, user, &format!("hello from {i}"));
    }
    for round in 0..30 {
        exchange(&mut device, &mut users[0], &format!("history {round}"));
    }
    let before = files(&dir);
    exchange(&mut device, &mut users[0], "measured while busy");
    let (files_busy, bytes_busy) = written(&before, &files(&dir));
    println!(
        "one message: {files_small} files / {bytes_small} B alone, {files_busy} files / {bytes_busy} B with 24 peers and 33 turns"
    );
    assert_eq!(files_small, files_busy, "the same records change");
    assert!(
        bytes_busy <= bytes_small + bytes_small / 4,
        "bytes per message grew with the store: {bytes_small} -> {bytes_busy}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_forged_message_commits_nothing_and_a_first_message_commits_once() {
    let dir = temp_dir("tx");
    let mut device = open(&dir, 1).unwrap();
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    let bundle = device.prekey_bundle(SystemTime::now(), &mut rng).unwrap();
    let (pre_key_id, _) = bundle.pre_key.unwrap();
    let mut user = BridgeUser::join("carol", 7, &bundle);
    let genuine = user.encrypt("hello");
    let mut forged = genuine.clone();
    let last = forged.body.len() - 1;
    forged.body[last] ^= 1;
    let before = (device.sequence(), files(&dir));
    assert!(device
        .receive(&user.address.clone(), &forged, &mut rng)
        .is_err());
    assert_eq!(
        (device.sequence(), files(&dir)),
        before,
        "a forgery changes nothing"
    );
    assert!(device.store().get_pre_key(pre_key_id).is_ok());

    // The first message: identity saved, session created, one-time prekey
    // removed, turn journaled, all in one commit.
    device
        .receive(&user.address.clone(), &genuine, &mut rng)
        .unwrap();
    assert_eq!(device.sequence(), before.0.map(|s| s + 1));
    assert!(device.store().get_pre_key(pre_key_id).is_err());
    assert!(device
        .store()
        .get_identity(&user.address)
        .unwrap()
        .is_some());
    drop(device);
    let device = open(&dir, 1).unwrap();
    assert_eq!(
        device.unanswered().count(),
        1,
        "the journaled turn survives"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn tampering_is_a_typed_error_never_a_new_identity() {
    let dir = temp_dir("tamper");
    let (mut alice, _bob) = populated(&dir, 1);
    let old = files(&dir);
    {
        // More traffic, so records have newer generations.
        let mut device = open(&dir, 1).unwrap();
        let mut rng = ChaCha20Rng::seed_from_u64(6);
        let bundle = device.prekey_bundle(SystemTime::now(), &mut rng).unwrap();
        let mut dave = BridgeUser::join("dave", 40, &bundle);
        for i in 0..3 {
            for user in [&mut dave, &mut alice] {
                let env = user.encrypt(&format!("{} {i}", user.address.name));
                let sender = user.address.clone();
                for r in device
                    .handle(&sender, &env, &mut EchoAssistant::default(), &mut rng)
                    .unwrap()
                {
                    device.ack(&r.turn).unwrap();
                }
            }
        }
    }
    let now = files(&dir);
    let (old_tags, now_tags) = (record_tags(&old), record_tags(&now));
    let case = temp_dir("tamper-case");
    let check = |name: &str, files: &BTreeMap<String, Vec<u8>>, ok: &dyn Fn(&Error) -> bool| {
        write_files(&case, files);
        match open(&case, 1) {
            Ok(_) => panic!("{name}: opened as if nothing happened"),
            Err(e) => assert!(ok(&e), "{name}: {e:?}"),
        }
        // The refused directory is left as it was, for inspection.
        assert_eq!(&self::files(&case), files, "{name}: open changed the files");
    };

    // Untouched, it opens.
    write_files(&case, &now);
    assert!(open(&case, 1).is_ok());

    // A record file deleted.
    let (_, (_, victim)) = now_tags.iter().next().unwrap();
    let mut deleted = now.clone();
    deleted.remove(victim);
    check("deleted record", &deleted, &|e| {
        matches!(e, Error::StoreRecordMissing { .. })
    });

    // Two record files swapped.
    let mut it = now_tags.values();
    let (a, b) = (&it.next().unwrap().1, &it.next().unwrap().1);
    let mut swapped = now.clone();
    swapped.insert(a.clone(), now[b].clone());
    swapped.insert(b.clone(), now[a].clone());
    check("swapped records", &swapped, &|e| {
        matches!(e, Error::StoreRecordMismatch { .. })
    });

    // An older version of a record restored, over the current file or
    // beside it under its own name.
    let (tag, (_, current)) = now_tags
        .iter()
        .find(|(tag, (g, _))| old_tags.get(*tag).is_some_and(|(og, _)| og < g))
        .expect("a record that changed since the snapshot");
    let older = &old_tags[tag].1;
    let mut restored = now.clone();
    restored.insert(current.clone(), old[older].clone());
    check("older record over the current", &restored, &|e| {
        matches!(e, Error::StoreRollback { .. })
    });
    let mut restored = now.clone();
    restored.remove(current);
    restored.insert(older.clone(), old[older].clone());
    check("older record in place", &restored, &|e| {
        matches!(e, Error::StoreRollback { .. })
    });

    // The older log restored: records are newer than it.
    let mut old_log = now.clone();
    old_log.insert("log".into(), old["log"].clone());
    check("older log", &old_log, &|e| {
        matches!(
            e,
            Error::StoreRollback { .. } | Error::StoreRecordMissing { .. }
        )
    });

    // The log deleted: record files without their log.
    let mut no_log = now.clone();
    no_log.remove("log");
    check("deleted log", &no_log, &|e| {
        matches!(e, Error::StoreRecordMissing { .. })
    });

    // One bit flipped in a record, and in the log's first entry.
    let mut flipped = now.clone();
    let bytes = flipped.get_mut(victim).unwrap();
    let mid = bytes.len() - 5;
    bytes[mid] ^= 4;
    check("flipped record bit", &flipped, &|e| {
        matches!(e, Error::StoreDecrypt { .. })
    });
    let mut flipped = now.clone();
    flipped.get_mut("log").unwrap()[40] ^= 4;
    check("flipped log bit", &flipped, &|e| {
        matches!(e, Error::StoreDecrypt { .. })
    });

    // A second process on the same directory.
    write_files(&case, &now);
    let first = open(&case, 1).unwrap();
    assert!(matches!(open(&case, 1), Err(Error::StoreLocked { .. })));
    drop(first);
    let _ = std::fs::remove_dir_all(&case);
    let _ = std::fs::remove_dir_all(&dir);
}

const CHILD_ENV: &str = "SOTTO_BRIDGE_CRASH_CHILD";

/// Child mode: a user sends message after message through a device in the
/// given directory, printing each committed exchange.
#[test]
fn crash_child_writer() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let dir = PathBuf::from(dir);
    let mut device = open(&dir, 7).unwrap();
    let mut rng = ChaCha20Rng::seed_from_u64(8);
    let bundle = device.prekey_bundle(SystemTime::now(), &mut rng).unwrap();
    let mut user = BridgeUser::join("crash", 9, &bundle);
    let padding = "x".repeat(2048);
    for n in 1.. {
        let env = user.encrypt(&format!("{n} {padding}"));
        for r in device
            .handle(
                &user.address.clone(),
                &env,
                &mut EchoAssistant::default(),
                &mut rng,
            )
            .unwrap()
        {
            device.ack(&r.turn).unwrap();
        }
        println!("committed {n}");
    }
}

#[test]
fn sigkilled_writer_keeps_every_committed_exchange() {
    let dir = temp_dir("crash");
    let crash = sotto_bridge::ProtocolAddress::new("crash", 1);
    for round in 0..3 {
        let exe = std::env::current_exe().unwrap();
        let mut child = Command::new(exe)
            .args([
                "--exact",
                "crash_child_writer",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, &dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut last = 0usize;
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap_or_default();
            if let Some(n) = line.strip_prefix("committed ") {
                last = n.trim().parse().unwrap_or(0);
                if last >= 5 + round * 3 {
                    break;
                }
            }
        }
        child.kill().unwrap();
        let _ = child.wait();
        let mut device = open(&dir, 7).unwrap_or_else(|e| panic!("reopen after SIGKILL: {e}"));
        // Everything reported committed is there; the exchange in flight
        // may be there too (answered or still unanswered).
        let turns = device.history(&crash).unwrap();
        let messages = turns
            .iter()
            .filter(|t| t.role == sotto_bridge::Role::User)
            .count();
        assert!(
            messages == last || messages == last + 1,
            "round {round}: {messages} messages kept after {last} committed"
        );
        assert_eq!(turns.len(), 2 * messages - device.unanswered().count());
        // The next round's child is a new user at the same address.
        device.forget_peer(&crash).unwrap();
    }
    let _ = std::fs::remove_dir_all(&dir);
}
