//! Sessions saved sealed and restored on the default model: a restored
//! chat answers exactly as the uninterrupted one, without prefilling its
//! history again, and every damaged, foreign or stale file is refused with
//! its own typed error, leaving the chat it was to go into unchanged.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use sotto_bridge::{Sealer, StorageKey};
use sotto_engine::{BackendChoice, Chat, Error, LoadedModel, SessionFileProblem};
use sotto_tests::{default_model_path, greedy};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

const SYSTEM: &str = "You are a helpful assistant.";
const HEADER_LEN: usize = 66;

fn loaded() -> Arc<LoadedModel> {
    static MODEL: OnceLock<Arc<LoadedModel>> = OnceLock::new();
    MODEL
        .get_or_init(|| {
            Arc::new(LoadedModel::open(default_model_path(), BackendChoice::default()).unwrap())
        })
        .clone()
}

fn key() -> StorageKey {
    StorageKey::from_bytes([0x5a; 32])
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sotto-session-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A chat after one exchange, saved at `path`.
fn saved_chat(path: &Path) -> Chat {
    let mut chat = loaded().chat(512, Some(SYSTEM)).unwrap();
    chat.send("Name three fruits.", &greedy(24), &mut |_| {})
        .unwrap();
    chat.save(path, &key()).unwrap();
    chat
}

fn problem<T>(result: sotto_engine::Result<T>) -> SessionFileProblem {
    match result {
        Err(Error::SessionFile { problem, .. }) => problem,
        Err(e) => panic!("expected a session file error, got {e}"),
        Ok(_) => panic!("the file was accepted"),
    }
}

#[test]
fn a_restored_chat_answers_as_the_uninterrupted_one_without_prefilling_again() {
    let dir = temp_dir("identical");
    let path = dir.join("chat.session");
    let mut uninterrupted = saved_chat(&path);
    let saved_tokens = uninterrupted.session().cached_tokens().to_vec();
    let follow_up = "And three vegetables?";
    let expected = uninterrupted
        .send(follow_up, &greedy(32), &mut |_| {})
        .unwrap();

    let mut restored = loaded().restore_chat(&path, &key(), 512).unwrap();
    assert_eq!(restored.session().cached_tokens(), saved_tokens.as_slice());
    assert_eq!(restored.session().cache().len(), saved_tokens.len());
    assert_eq!(
        restored.messages(),
        &uninterrupted.messages()[..uninterrupted.messages().len() - 2]
    );
    let reply = restored.send(follow_up, &greedy(32), &mut |_| {}).unwrap();
    assert_eq!(reply.text, expected.text);
    assert_eq!(reply.stats.tokens, expected.stats.tokens);
    // No re-prefill: the whole restored cache is reused and only the new
    // turn's tokens run, as in the uninterrupted chat.
    assert_eq!(reply.stats.reused_tokens, saved_tokens.len());
    assert_eq!(reply.stats.reused_tokens, expected.stats.reused_tokens);
    assert!(reply.stats.prompt_tokens - reply.stats.reused_tokens < 20);

    // The bare session level round-trips the same cache.
    let session = loaded().restore_session(&path, &key(), 512).unwrap();
    assert_eq!(session.cached_tokens(), saved_tokens.as_slice());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_file_is_sealed_and_holds_only_the_valid_rows() {
    let dir = temp_dir("sealed");
    let path = dir.join("chat.session");
    let chat = saved_chat(&path);
    let bytes = std::fs::read(&path).unwrap();
    let cache = chat.session().cache();
    let n = chat.session().cached_tokens().len();
    let kv = cache.n_layer() * 2 * cache.n_kv_head() * n * cache.head_dim() * 2;
    // header, nonce and tag, geometry and tokens, KV rows 0..n, messages
    assert!(bytes.len() > HEADER_LEN + 40 + kv + 4 * n);
    assert!(bytes.len() < HEADER_LEN + 40 + kv + 4 * n + 1024);
    assert!(bytes.len() < cache.bytes(), "not the whole capacity");
    assert_eq!(&bytes[..8], b"SOTTOSES");
    assert_eq!(&bytes[10..42], &loaded().model_digest().unwrap());
    for text in ["Name three fruits", "helpful assistant", "user"] {
        assert!(
            !bytes.windows(text.len()).any(|w| w == text.as_bytes()),
            "{text:?} in the clear"
        );
    }
    // The temp file of the atomic write is gone.
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn damaged_foreign_and_stale_files_are_refused_and_lose_nothing() {
    let dir = temp_dir("refused");
    let path = dir.join("chat.session");
    let mut chat = saved_chat(&path);
    let good = std::fs::read(&path).unwrap();
    let bad = dir.join("bad.session");
    let model = loaded();

    // A chat with a conversation of its own, which refused restores must
    // leave as it is.
    let mut victim = model.chat(512, Some(SYSTEM)).unwrap();
    victim
        .send("What is the capital of France?", &greedy(16), &mut |_| {})
        .unwrap();
    let (messages, tokens) = (
        victim.messages().to_vec(),
        victim.session().cached_tokens().to_vec(),
    );
    let mut check = |bytes: &[u8], what: &str, ok: &dyn Fn(&SessionFileProblem) -> bool| {
        std::fs::write(&bad, bytes).unwrap();
        let p = problem(victim.restore(&bad, &key()));
        assert!(ok(&p), "{what}: {p}");
        assert_eq!(victim.messages(), messages.as_slice(), "{what}");
        assert_eq!(
            victim.session().cached_tokens(),
            tokens.as_slice(),
            "{what}"
        );
        assert_eq!(victim.session().cache().len(), tokens.len(), "{what}");
    };

    let flipped = |at: usize| {
        let mut b = good.clone();
        b[at] ^= 0x01;
        b
    };
    check(&flipped(0), "magic", &|p| {
        matches!(p, SessionFileProblem::NotASessionFile)
    });
    check(&flipped(8), "version", &|p| {
        matches!(
            p,
            SessionFileProblem::UnknownVersion {
                found: 3,
                supported: 2
            }
        )
    });
    check(&flipped(20), "model digest in the header", &|p| {
        matches!(p, SessionFileProblem::Tampered)
    });
    check(&flipped(60), "sealed length", &|p| {
        matches!(
            p,
            SessionFileProblem::Truncated { .. } | SessionFileProblem::Tampered
        )
    });
    for at in [
        HEADER_LEN,            // nonce
        HEADER_LEN + 24 + 3,   // geometry
        HEADER_LEN + 24 + 100, // tokens
        good.len() / 2,        // keys and values
        good.len() - 30,       // messages
        good.len() - 1,        // Poly1305 tag
    ] {
        check(&flipped(at), &format!("byte {at}"), &|p| {
            matches!(p, SessionFileProblem::Tampered)
        });
    }
    for len in [0, 5, 40, HEADER_LEN, good.len() / 2, good.len() - 1] {
        check(&good[..len], &format!("truncated to {len}"), &|p| {
            matches!(p, SessionFileProblem::Truncated { .. })
        });
    }
    let mut longer = good.clone();
    longer.push(0);
    check(&longer, "a byte appended", &|p| {
        matches!(p, SessionFileProblem::Tampered)
    });
    check(b"GGUF and something else", "another file", &|p| {
        matches!(p, SessionFileProblem::NotASessionFile)
    });

    // The right file with the wrong key.
    let wrong_key = StorageKey::from_bytes([0xa5; 32]);
    let p = problem(model.restore_chat(&path, &wrong_key, 512));
    assert!(matches!(p, SessionFileProblem::WrongKey), "{p}");

    // Too many tokens for the context asked for.
    let p = problem(model.restore_chat(&path, &key(), 32));
    assert!(
        matches!(p, SessionFileProblem::ContextTooSmall { .. }),
        "{p}"
    );

    // A session not opened through a LoadedModel is bound to no model
    // file: it is neither saved nor restored.
    let mut unbound = sotto_tests::default_session(64);
    let p = problem(unbound.save(dir.join("unbound.session"), &key()));
    assert!(matches!(p, SessionFileProblem::Unbound(_)), "{p}");
    let p = problem(unbound.restore(&path, &key()));
    assert!(matches!(p, SessionFileProblem::Unbound(_)), "{p}");

    // Larger than any session of the context could be: not even read.
    let mut huge = good.clone();
    huge.resize(20 << 20, 0);
    std::fs::write(&bad, &huge).unwrap();
    let p = problem(model.restore_chat(&bad, &key(), 32));
    assert!(matches!(p, SessionFileProblem::TooLarge { .. }), "{p}");

    // A file from a bare session holds no chat.
    let session_only = dir.join("session.session");
    chat.session().save(&session_only, &key()).unwrap();
    let p = problem(model.restore_chat(&session_only, &key(), 512));
    assert!(matches!(p, SessionFileProblem::NoChat), "{p}");

    // Authentic, bound to this model, but of another geometry: sealed here
    // with the bridge's sealer as the documented format says.
    let geometry = authentic_file(&good, |plain| plain[0] ^= 0x01);
    std::fs::write(&bad, &geometry).unwrap();
    let p = problem(model.restore_chat(&bad, &key(), 512));
    assert!(matches!(p, SessionFileProblem::Geometry { .. }), "{p}");
    // Authentic, but layer 0 says it holds positions from 1 on: a layer
    // that keeps every position (no ring) cannot, nor past the tokens.
    let n = chat.session().cached_tokens().len();
    let first_at = 13 + 4 + 4 * n;
    for first in [1u32, n as u32 + 1] {
        let ring = authentic_file(&good, |plain| {
            plain[first_at..first_at + 4].copy_from_slice(&first.to_le_bytes())
        });
        std::fs::write(&bad, &ring).unwrap();
        let p = problem(model.restore_chat(&bad, &key(), 512));
        assert!(
            matches!(p, SessionFileProblem::Geometry { .. }),
            "first {first}: {p}"
        );
    }

    // The original still restores after all that, and the chat that
    // refused everything still answers.
    let mut restored = model.restore_chat(&path, &key(), 512).unwrap();
    assert_eq!(restored.messages(), chat.messages());
    victim
        .send("And of Italy?", &greedy(8), &mut |_| {})
        .unwrap();
    restored.send("Thanks.", &greedy(4), &mut |_| {}).unwrap();
    chat.send("Thanks.", &greedy(4), &mut |_| {}).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// `good` opened, its plaintext changed by `edit`, sealed again under the
/// test key with the header kept: authentic, but with other contents.
fn authentic_file(good: &[u8], edit: impl Fn(&mut Vec<u8>)) -> Vec<u8> {
    resealed(good, |_| {}, edit)
}

/// `good` opened, its header changed by `header_edit` and its plaintext by
/// `edit`, sealed again under the test key with the new header (the
/// sealed length field follows the plaintext).
fn resealed(
    good: &[u8],
    header_edit: impl Fn(&mut Vec<u8>),
    edit: impl Fn(&mut Vec<u8>),
) -> Vec<u8> {
    let sealer = Sealer::for_purpose(&key(), "engine session");
    let aad = |h: &[u8]| [b"engine session\0".as_slice(), h].concat();
    let mut plain = sealer
        .open(&aad(&good[..HEADER_LEN]), &good[HEADER_LEN..])
        .unwrap()
        .to_vec();
    // nonce and tag
    let overhead = good.len() - HEADER_LEN - plain.len();
    edit(&mut plain);
    let mut header = good[..HEADER_LEN].to_vec();
    header_edit(&mut header);
    header[58..66].copy_from_slice(&((plain.len() + overhead) as u64).to_le_bytes());
    [header.clone(), sealer.seal(&aad(&header), &plain).unwrap()].concat()
}

/// A version 1 file (no per-layer oldest position: every layer's rows
/// from 0) restores as the version 2 file it was made from.
#[test]
fn a_version_1_file_still_restores() {
    let dir = temp_dir("v1");
    let path = dir.join("chat.session");
    let mut chat = saved_chat(&path);
    let good = std::fs::read(&path).unwrap();
    let cache = chat.session().cache();
    let n = chat.session().cached_tokens().len();
    let (n_layer, n_kv, hd) = (cache.n_layer(), cache.n_kv_head(), cache.head_dim());
    let v1 = resealed(
        &good,
        |h| h[8..10].copy_from_slice(&1u16.to_le_bytes()),
        |plain| {
            // geometry (13 bytes), tokens, then per layer a u32 0 before
            // its f16 keys and values
            let layer_bytes = 2 * n_kv * n * hd * 2;
            let mut at = 13 + 4 + 4 * n;
            for _ in 0..n_layer {
                assert_eq!(plain[at..at + 4], [0; 4]);
                plain.drain(at..at + 4);
                at += layer_bytes;
            }
        },
    );
    let old = dir.join("v1.session");
    std::fs::write(&old, &v1).unwrap();
    let mut restored = loaded().restore_chat(&old, &key(), 512).unwrap();
    assert_eq!(
        restored.session().cached_tokens(),
        chat.session().cached_tokens()
    );
    let a = chat
        .send("And three nuts?", &greedy(12), &mut |_| {})
        .unwrap();
    let b = restored
        .send("And three nuts?", &greedy(12), &mut |_| {})
        .unwrap();
    assert_eq!(a.text, b.text);
    assert_eq!(b.stats.reused_tokens, a.stats.reused_tokens);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_file_saved_for_another_model_file_is_refused_as_such() {
    let dir = temp_dir("other-model");
    let path = dir.join("chat.session");
    saved_chat(&path);
    // The same model with one weight byte changed (the last byte of the
    // data section): same shapes, other weights, another digest.
    let mut bytes = std::fs::read(default_model_path()).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    let other_path = dir.join("other.gguf");
    std::fs::write(&other_path, &bytes).unwrap();
    drop(bytes);
    let other = LoadedModel::open(&other_path, BackendChoice::default()).unwrap();
    assert_ne!(other.model_digest(), loaded().model_digest());
    let p = problem(other.restore_chat(&path, &key(), 512));
    assert!(matches!(p, SessionFileProblem::OtherModel { .. }), "{p}");
    // And the other way round.
    let mut chat = other.chat(512, Some(SYSTEM)).unwrap();
    chat.send("Hi", &greedy(4), &mut |_| {}).unwrap();
    let theirs = dir.join("theirs.session");
    chat.save(&theirs, &key()).unwrap();
    let p = problem(loaded().restore_chat(&theirs, &key(), 512));
    assert!(matches!(p, SessionFileProblem::OtherModel { .. }), "{p}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_model_digest_is_the_files_sha256() {
    // An independent SHA-256: the system's sha256sum.
    let out = std::process::Command::new("sha256sum")
        .arg(default_model_path())
        .output()
        .expect("sha256sum (coreutils) is needed by this test");
    let text = String::from_utf8(out.stdout).unwrap();
    let hex: String = loaded()
        .model_digest()
        .unwrap()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(text.split_whitespace().next(), Some(hex.as_str()));
}

mod assistant {
    use super::*;
    use sotto_bridge::{Assistant, ConversationId, Turn};
    use sotto_engine::{AssistantConfig, EngineAssistant};

    fn assistant(dir: Option<&Path>) -> EngineAssistant {
        let config = AssistantConfig {
            max_tokens: 24,
            context: 512,
            warm_conversations: 1,
            ..AssistantConfig::default()
        };
        let a = EngineAssistant::new(loaded(), config);
        match dir {
            Some(dir) => a.with_saved_sessions(dir, key()),
            None => a,
        }
    }

    #[test]
    fn a_restarted_assistant_resumes_conversations_without_prefilling_them_again() {
        let dir = temp_dir("assistant");
        let sessions = dir.join("sessions");
        let (alice, bob) = (
            ConversationId("+15550001111.1".into()),
            ConversationId("+15550002222.1".into()),
        );
        let mut first = assistant(Some(&sessions));
        let mut alice_history = vec![Turn::user("Name three fruits.")];
        let answer = first.reply(&alice, &alice_history).unwrap();
        let alice_cached = {
            let s = first.last_stats().unwrap();
            s.prompt_tokens + s.tokens.len() - 1
        };
        alice_history.push(Turn::assistant(answer));
        // Bob's turn evicts Alice (one warm conversation): she is saved.
        let mut bob_history = vec![Turn::user("What is the capital of France?")];
        let answer = first.reply(&bob, &bob_history).unwrap();
        bob_history.push(Turn::assistant(answer));
        let bob_cached = {
            let s = first.last_stats().unwrap();
            s.prompt_tokens + s.tokens.len() - 1
        };
        // Bob is still warm: an explicit persist saves him before "exit".
        first.persist().unwrap();
        drop(first);
        let mut names: Vec<String> = std::fs::read_dir(&sessions)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names.len(), 2, "{names:?}");
        for name in &names {
            assert!(!name.contains("1555"), "{name} reveals the conversation");
        }

        // The restarted assistant answers both from their saved caches, as
        // an assistant without saved sessions does after prefilling.
        let mut restarted = assistant(Some(&sessions));
        let mut control = assistant(None);
        for (id, history, cached) in [
            (&alice, &mut alice_history, alice_cached),
            (&bob, &mut bob_history, bob_cached),
        ] {
            history.push(Turn::user("Tell me more."));
            let resumed = restarted.reply(id, history).unwrap();
            let stats = restarted.last_stats().unwrap().clone();
            assert_eq!(stats.reused_tokens, cached, "{}", id.0);
            assert!(stats.prompt_tokens - stats.reused_tokens < 20);
            let prefilled = control.reply(id, history).unwrap();
            assert_eq!(control.last_stats().unwrap().reused_tokens, 0);
            assert_eq!(resumed, prefilled, "{}", id.0);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_damaged_saved_session_is_dropped_and_the_conversation_prefilled() {
        let dir = temp_dir("assistant-damaged");
        let id = ConversationId("+15550003333.1".into());
        let mut first = assistant(Some(&dir));
        let mut history = vec![Turn::user("Name three fruits.")];
        let answer = first.reply(&id, &history).unwrap();
        history.push(Turn::assistant(answer));
        first.persist().unwrap();
        let file = std::fs::read_dir(&dir)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let mut bytes = std::fs::read(&file).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x10;
        std::fs::write(&file, &bytes).unwrap();

        history.push(Turn::user("Tell me more."));
        let mut restarted = assistant(Some(&dir));
        let resumed = restarted.reply(&id, &history).unwrap();
        assert_eq!(restarted.last_stats().unwrap().reused_tokens, 0);
        assert!(!file.exists(), "the refused file is removed");
        let prefilled = assistant(None).reply(&id, &history).unwrap();
        assert_eq!(resumed, prefilled);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
