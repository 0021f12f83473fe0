//! Sessions and chats saved to disk, sealed, and read back, so a restarted
//! app resumes a conversation without prefilling it again.
//!
//! A file is a header in the clear, then one blob sealed with the bridge's
//! [`Sealer`] (XChaCha20-Poly1305 under keys derived from the app's
//! [`StorageKey`] for this purpose alone). The header is the AEAD's
//! associated data, so it is authenticated too; it is read first only to
//! tell the failures apart:
//!
//! ```text
//! 0   magic            b"SOTTOSES"
//! 8   format version   u16 LE (2; 1 is read too)
//! 10  model digest     [32]  SHA-256 of the model's bytes (ModelDigest)
//! 42  key check        [16]  Sealer::key_check of the key it was sealed under
//! 58  sealed length    u64 LE
//! 66  sealed           nonce || ciphertext || tag
//! ```
//!
//! The sealed plaintext, little-endian throughout:
//!
//! ```text
//! geometry  n_layer u32, n_kv_head u32, head_dim u32, kv dtype u8: 1 for
//!           f16 keys and values, else (key plane << 4) | value plane, a
//!           plane being type | rotation << 2 with type 1 = f16, 2 = q8_0,
//!           3 = q4_0 and rotation 0 = stored as is, 1, 2, 3 = stored
//!           rotated by the Walsh–Hadamard transform in blocks of 64, 128,
//!           256 (see kv_cache::KvRotations)
//! tokens    count u32, ids u32 × count
//! kv        per layer: first u32 (the oldest position it holds: 0, or
//!           later for a sliding-window ring; absent in version 1), keys
//!           [n_kv_head][count - first] rows of head_dim elements in
//!           their type (f16, or ggml's Q8_0 / Q4_0 blocks: f16 scale then
//!           codes; as stored, rotated or not), in position order, then
//!           values (the valid positions only, not the cache's capacity)
//! chat      0u8, or 1u8, SHA-256 of the template source [32],
//!           message count u32, per message role and content (u32 length + UTF-8)
//! ```
//!
//! Restoring checks everything before it changes anything: a refused file
//! leaves the session (and its chat) as they were.

use crate::chat::Chat;
use crate::error::{Error, Result};
use crate::generate::Session;
use crate::kv_cache::{Hadamard, KvCache, KvRotations, KvType, KvTypes};
use crate::model_digest::ModelDigest;
use crate::open::LoadedModel;
use sha2::{Digest, Sha256};
use sotto_bridge::{write_file_atomically, Sealer, StorageKey, KEY_CHECK_LEN};
use sotto_models::chat::{ChatMessage, ChatTemplate};
use std::path::Path;
use thiserror::Error;
use zeroize::Zeroizing;

const MAGIC: &[u8; 8] = b"SOTTOSES";
/// The format version this build writes and reads.
pub const FORMAT_VERSION: u16 = 2;
/// The sealing purpose: keys of their own, apart from the bridge's store.
const PURPOSE: &str = "engine session";
const DIGEST_AT: usize = 10;
const KEY_CHECK_AT: usize = DIGEST_AT + 32;
const SEALED_LEN_AT: usize = KEY_CHECK_AT + KEY_CHECK_LEN;
const HEADER_LEN: usize = SEALED_LEN_AT + 8;
/// Room for messages beyond 512 bytes per context position (a history
/// longer than the window it was rendered through).
const MESSAGE_ROOM: u64 = 16 << 20;
/// The dtype byte of f16 keys and values (the only one of the first files).
const KV_DTYPE_F16: u8 = 1;

fn kv_code(t: KvType) -> u8 {
    match t {
        KvType::F16 => 1,
        KvType::Q8_0 => 2,
        KvType::Q4_0 => 3,
    }
}

/// The Hadamard block sizes a plane's rotation code 1, 2, 3 names.
const ROTATION_BLOCKS: [usize; 3] = [64, 128, 256];

/// A plane's four bits: its type and its rotation; `None` for a rotation
/// the format has no code for.
fn plane_code(t: KvType, r: Option<Hadamard>) -> Option<u8> {
    let rot = match r {
        None => 0,
        Some(h) => ROTATION_BLOCKS.iter().position(|&n| n == h.n())? as u8 + 1,
    };
    Some(kv_code(t) | rot << 2)
}

/// The type and rotation of a plane's four bits, if valid.
fn plane_of(code: u8) -> Option<(KvType, Option<Hadamard>)> {
    let t = KvType::ALL.into_iter().find(|&t| kv_code(t) == code & 3)?;
    let r = match code >> 2 {
        0 => None,
        c => Some(Hadamard::new(ROTATION_BLOCKS[c as usize - 1]).ok()?),
    };
    Some((t, r))
}

/// The dtype byte of a cache of `types` under `rotations`; `None` when the
/// format cannot record them.
fn kv_dtype(types: KvTypes, rotations: KvRotations) -> Option<u8> {
    if types.is_f16() && rotations == KvRotations::default() {
        Some(KV_DTYPE_F16)
    } else {
        Some(plane_code(types.k, rotations.k)? << 4 | plane_code(types.v, rotations.v)?)
    }
}

/// The types and rotations a dtype byte names, if any.
fn kv_planes_of(dtype: u8) -> Option<(KvTypes, KvRotations)> {
    if dtype == KV_DTYPE_F16 {
        return Some(Default::default());
    }
    let ((k, kr), (v, vr)) = (plane_of(dtype >> 4)?, plane_of(dtype & 0x0F)?);
    Some((KvTypes { k, v }, KvRotations { k: kr, v: vr }))
}

/// Why a session file was refused (inside [`Error::SessionFile`]).
#[derive(Debug, Error)]
pub enum SessionFileProblem {
    /// The file could not be read.
    #[error("cannot read it: {0}")]
    Read(#[source] std::io::Error),
    /// Sealing or writing the file failed.
    #[error("cannot write it: {0}")]
    Write(#[source] sotto_bridge::Error),
    /// It does not start with a session file's magic.
    #[error("not a Sotto session file")]
    NotASessionFile,
    /// Written in a format version this build does not read.
    #[error("format version {found}, this build reads version {supported}")]
    UnknownVersion {
        /// The file's version.
        found: u16,
        /// The version this build reads.
        supported: u16,
    },
    /// Shorter than its header says.
    #[error("truncated: {found} bytes of {expected}")]
    Truncated {
        /// Bytes the header announces.
        expected: u64,
        /// Bytes present.
        found: u64,
    },
    /// Sealed under another key than the one given.
    #[error("sealed under another key")]
    WrongKey,
    /// Its contents fail authentication: modified, damaged, or its
    /// header altered.
    #[error("failed authentication: tampered with or damaged")]
    Tampered,
    /// Sealed (authentically) for another model file: its caches are
    /// meaningless for this one.
    #[error("saved for another model (digest {saved}…), this model's is {current}…")]
    OtherModel {
        /// Start of the digest the file was saved for, in hex.
        saved: String,
        /// Start of this model's digest, in hex.
        current: String,
    },
    /// The saved KV cache has another shape than this session's backend.
    #[error("KV geometry {saved} differs from this session's {current}")]
    Geometry {
        /// Layers × KV heads × head size / element type saved.
        saved: String,
        /// The same for this session.
        current: String,
    },
    /// The session holds more tokens than the context to restore it in.
    #[error("holds {tokens} tokens, the context has room for {context}")]
    ContextTooSmall {
        /// Tokens saved.
        tokens: usize,
        /// Context asked for.
        context: usize,
    },
    /// The chat was rendered through another chat template.
    #[error("saved with another chat template")]
    OtherTemplate,
    /// Saved from a bare session: there is no chat state to restore.
    #[error("holds a session without chat state")]
    NoChat,
    /// The session is not bound to a model file (opened without a
    /// [`LoadedModel`], or with LoRA adapters), so it cannot be saved.
    #[error("the session is not bound to a model file ({0})")]
    Unbound(&'static str),
    /// Authenticated but not what this version writes (a writer bug).
    #[error("malformed contents: {0}")]
    Malformed(&'static str),
    /// Larger than any session of this context can be: not read.
    #[error("{bytes} bytes, more than a session of this context holds ({limit})")]
    TooLarge {
        /// The file's size.
        bytes: u64,
        /// The most a session file for this session can hold.
        limit: u64,
    },
    /// The directory for saved sessions could not be created.
    #[error("cannot create its directory: {0}")]
    CreateDir(#[source] std::io::Error),
}

/// The file name (without directory) of `name`'s saved session under
/// `key`: a keyed tag in hex, so names do not reveal which conversation
/// (or peer) a file belongs to.
pub fn session_file_name(key: &StorageKey, name: &[u8]) -> String {
    let tag = Sealer::for_purpose(key, PURPOSE).tag(0, name);
    let hex: String = tag.iter().map(|b| format!("{b:02x}")).collect();
    format!("{hex}.session")
}

fn problem(path: &Path, problem: SessionFileProblem) -> Error {
    Error::SessionFile {
        path: path.to_path_buf(),
        problem,
    }
}

fn hex_prefix(digest: &[u8]) -> String {
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

fn template_digest(template: &ChatTemplate) -> [u8; 32] {
    Sha256::digest(template.source().as_bytes()).into()
}

/// The cache geometry as saved: layers, KV heads, head size, element
/// types and the rotations the planes are stored under (a cache read back
/// under another rotation would be garbage).
#[derive(Clone, Copy, PartialEq, Eq)]
struct Geometry {
    n_layer: usize,
    n_kv_head: usize,
    head_dim: usize,
    types: KvTypes,
    rotations: KvRotations,
}

impl Geometry {
    fn of(cache: &KvCache) -> Self {
        Self {
            n_layer: cache.n_layer(),
            n_kv_head: cache.n_kv_head(),
            head_dim: cache.head_dim(),
            types: cache.types(),
            rotations: cache.rotations(),
        }
    }
    fn describe(&self) -> String {
        let rotated = if self.rotations == KvRotations::default() {
            String::new()
        } else {
            format!(" ({})", self.rotations)
        };
        format!(
            "{}×{}×{}/{}{rotated}",
            self.n_layer, self.n_kv_head, self.head_dim, self.types
        )
    }
}

fn header(digest: &[u8; 32], key_check: &[u8; KEY_CHECK_LEN], sealed_len: u64) -> Vec<u8> {
    let mut h = Vec::with_capacity(HEADER_LEN);
    h.extend_from_slice(MAGIC);
    h.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    h.extend_from_slice(digest);
    h.extend_from_slice(key_check);
    h.extend_from_slice(&sealed_len.to_le_bytes());
    h
}

/// The AEAD's associated data: the purpose and the whole header.
fn associated_data(header: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(PURPOSE.len() + 1 + header.len());
    aad.extend_from_slice(PURPOSE.as_bytes());
    aad.push(0);
    aad.extend_from_slice(header);
    aad
}

fn push_u32(out: &mut Vec<u8>, v: usize) -> Result<(), SessionFileProblem> {
    let v = u32::try_from(v).map_err(|_| SessionFileProblem::Malformed("a length over 4 GiB"))?;
    out.extend_from_slice(&v.to_le_bytes());
    Ok(())
}

fn push_str(out: &mut Vec<u8>, s: &str) -> Result<(), SessionFileProblem> {
    push_u32(out, s.len())?;
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

/// The plaintext of `session` (and `chat`'s state).
fn encode(
    session: &Session,
    chat: Option<(&ChatTemplate, &[ChatMessage])>,
) -> Result<Zeroizing<Vec<u8>>, SessionFileProblem> {
    let cache = session.cache();
    let tokens = session.cached_tokens();
    let g = Geometry::of(cache);
    let n = tokens.len();
    let kv_bytes = g.n_layer * g.n_kv_head * n * g.head_dim * 4;
    let mut out = Zeroizing::new(Vec::with_capacity(32 + 4 * n + kv_bytes));
    push_u32(&mut out, g.n_layer)?;
    push_u32(&mut out, g.n_kv_head)?;
    push_u32(&mut out, g.head_dim)?;
    out.push(
        kv_dtype(g.types, g.rotations).ok_or(SessionFileProblem::Malformed(
            "a KV rotation the format has no code for",
        ))?,
    );
    push_u32(&mut out, n)?;
    for t in tokens {
        out.extend_from_slice(&t.to_le_bytes());
    }
    for l in 0..g.n_layer {
        let first = cache.layout(l).first.min(n);
        push_u32(&mut out, first)?;
        let layer = cache.layer(l);
        for plane in [&layer.k, &layer.v] {
            for h in 0..g.n_kv_head {
                for p in first..n {
                    plane
                        .encode_rows(cache.row(l, h, p), 1, &mut out)
                        .map_err(|_| SessionFileProblem::Malformed("token count"))?;
                }
            }
        }
    }
    match chat {
        None => out.push(0),
        Some((template, messages)) => {
            out.push(1);
            out.extend_from_slice(&template_digest(template));
            push_u32(&mut out, messages.len())?;
            for m in messages {
                push_str(&mut out, &m.role)?;
                push_str(&mut out, &m.content)?;
            }
        }
    }
    Ok(out)
}

/// Reads the authenticated plaintext; every shortfall is `Malformed`.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], SessionFileProblem> {
        if self.bytes.len() < n {
            return Err(SessionFileProblem::Malformed(what));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }
    fn u8(&mut self, what: &'static str) -> Result<u8, SessionFileProblem> {
        Ok(self.take(1, what)?[0])
    }
    fn u32(&mut self, what: &'static str) -> Result<usize, SessionFileProblem> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }
    fn string(&mut self, what: &'static str) -> Result<String, SessionFileProblem> {
        let n = self.u32(what)?;
        String::from_utf8(self.take(n, what)?.to_vec())
            .map_err(|_| SessionFileProblem::Malformed(what))
    }
}

/// What a file holds, checked against the session it goes into.
struct Restored {
    cache: KvCache,
    tokens: Vec<u32>,
    /// Template digest and messages, for a chat's file.
    chat: Option<([u8; 32], Vec<ChatMessage>)>,
}

/// Reads, authenticates and checks `path` for `session`; the new cache is
/// built beside the session's, which is not touched.
fn read(path: &Path, key: &StorageKey, session: &Session) -> Result<Restored> {
    let fail = |p| problem(path, p);
    let digest = bound_digest(path, session)?;
    // Nothing larger than this session could have written is read into
    // memory: a full cache, its tokens, and generous room for messages.
    let g = Geometry::of(session.cache());
    let context = session.context() as u64;
    let limit = (HEADER_LEN + sotto_bridge::SEAL_OVERHEAD + 64) as u64
        + context * (4 + 512)
        + (g.n_layer * 2 * g.n_kv_head * g.head_dim * 2) as u64 * context
        + MESSAGE_ROOM;
    let size = std::fs::metadata(path)
        .map_err(|e| fail(SessionFileProblem::Read(e)))?
        .len();
    if size > limit {
        return Err(fail(SessionFileProblem::TooLarge { bytes: size, limit }));
    }
    let bytes = Zeroizing::new(std::fs::read(path).map_err(|e| fail(SessionFileProblem::Read(e)))?);
    let found = bytes.len() as u64;
    if bytes.len() < DIGEST_AT {
        if MAGIC.starts_with(&bytes) {
            return Err(fail(SessionFileProblem::Truncated {
                expected: HEADER_LEN as u64,
                found,
            }));
        }
        return Err(fail(SessionFileProblem::NotASessionFile));
    }
    if &bytes[..8] != MAGIC {
        return Err(fail(SessionFileProblem::NotASessionFile));
    }
    let version = u16::from_le_bytes([bytes[8], bytes[9]]);
    if !(1..=FORMAT_VERSION).contains(&version) {
        return Err(fail(SessionFileProblem::UnknownVersion {
            found: version,
            supported: FORMAT_VERSION,
        }));
    }
    if bytes.len() < HEADER_LEN {
        return Err(fail(SessionFileProblem::Truncated {
            expected: HEADER_LEN as u64,
            found,
        }));
    }
    let (head, sealed) = bytes.split_at(HEADER_LEN);
    let mut len = [0u8; 8];
    len.copy_from_slice(&head[SEALED_LEN_AT..]);
    let expected = (HEADER_LEN as u64).saturating_add(u64::from_le_bytes(len));
    if found < expected {
        return Err(fail(SessionFileProblem::Truncated { expected, found }));
    }
    if found > expected {
        return Err(fail(SessionFileProblem::Tampered));
    }
    let sealer = Sealer::for_purpose(key, PURPOSE);
    if head[KEY_CHECK_AT..SEALED_LEN_AT] != sealer.key_check() {
        return Err(fail(SessionFileProblem::WrongKey));
    }
    let plain = sealer
        .open(&associated_data(head), sealed)
        .ok_or_else(|| fail(SessionFileProblem::Tampered))?;
    // Authentic from here on: the digest is what the writer bound it to.
    let ours = digest.get();
    if head[DIGEST_AT..KEY_CHECK_AT] != ours {
        return Err(fail(SessionFileProblem::OtherModel {
            saved: hex_prefix(&head[DIGEST_AT..KEY_CHECK_AT]),
            current: hex_prefix(&ours),
        }));
    }
    let cache = session.backend().new_cache(session.context())?;
    decode(&plain, version, session, cache).map_err(fail)
}

/// The model `session` is bound to; saving and restoring need one.
fn bound_digest<'s>(path: &Path, session: &'s Session) -> Result<&'s ModelDigest> {
    session.model_digest().ok_or_else(|| {
        problem(
            path,
            SessionFileProblem::Unbound("opened without a LoadedModel, or with adapters"),
        )
    })
}

/// The plaintext's contents, checked against `session`, its keys and
/// values written into `cache` (a new cache of the session's backend).
fn decode(
    plain: &[u8],
    version: u16,
    session: &Session,
    mut cache: KvCache,
) -> Result<Restored, SessionFileProblem> {
    let mut r = Reader { bytes: plain };
    let (n_layer, n_kv_head, head_dim) =
        (r.u32("geometry")?, r.u32("geometry")?, r.u32("geometry")?);
    let dtype = r.u8("geometry")?;
    // the cache it restores into, of the backend's types
    let current = Geometry::of(&cache);
    let saved = kv_planes_of(dtype).map(|(types, rotations)| Geometry {
        n_layer,
        n_kv_head,
        head_dim,
        types,
        rotations,
    });
    if saved != Some(current) {
        return Err(SessionFileProblem::Geometry {
            saved: match saved {
                Some(g) => g.describe(),
                None => format!("{n_layer}×{n_kv_head}×{head_dim}/(element type {dtype})"),
            },
            current: current.describe(),
        });
    }
    let n = r.u32("token count")?;
    if n > session.context() {
        return Err(SessionFileProblem::ContextTooSmall {
            tokens: n,
            context: session.context(),
        });
    }
    let vocab = session.backend().spec().vocab_size;
    let tokens = r
        .take(4 * n, "tokens")?
        .chunks_exact(4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect::<Vec<u32>>();
    if tokens.iter().any(|&t| t as usize >= vocab) {
        return Err(SessionFileProblem::Malformed(
            "a token outside the vocabulary",
        ));
    }
    for l in 0..current.n_layer {
        let first = if version >= 2 {
            r.u32("keys and values")?
        } else {
            0
        };
        let layout = cache.layout(l);
        if first > n || (first > 0 && !cache.is_ring(l)) {
            return Err(SessionFileProblem::Geometry {
                saved: format!("layer {l} holding positions {first}..{n}"),
                current: format!("{} positions per head", layout.slots),
            });
        }
        // a ring keeps the newest positions its slots hold
        let kept = first.max(n.saturating_sub(layout.slots));
        let rows: Vec<usize> = (0..current.n_kv_head)
            .flat_map(|h| (first..n).map(move |p| (h, p)))
            .filter(|&(_, p)| p >= kept)
            .map(|(h, p)| cache.row(l, h, p))
            .collect();
        let layer = cache.layer_mut(l);
        for plane in [&mut layer.k, &mut layer.v] {
            let row = plane
                .kv_type()
                .row_bytes(current.head_dim)
                .map_err(|_| SessionFileProblem::Malformed("geometry"))?;
            let mut dst = rows.iter();
            for _ in 0..current.n_kv_head {
                let bytes = r.take(row * (n - first), "keys and values")?;
                for one in bytes.chunks_exact(row).skip(kept - first) {
                    let at = dst
                        .next()
                        .ok_or(SessionFileProblem::Malformed("keys and values"))?;
                    plane
                        .decode_rows(*at, one)
                        .map_err(|_| SessionFileProblem::Malformed("keys and values"))?;
                }
            }
        }
        cache
            .set_first(l, kept, n)
            .map_err(|_| SessionFileProblem::Malformed("keys and values"))?;
    }
    cache
        .set_len(n)
        .map_err(|_| SessionFileProblem::Malformed("token count"))?;
    let chat = match r.u8("chat flag")? {
        0 => None,
        1 => {
            let mut digest = [0u8; 32];
            digest.copy_from_slice(r.take(32, "template digest")?);
            let count = r.u32("message count")?;
            let mut messages = Vec::with_capacity(count.min(r.bytes.len() / 8));
            for _ in 0..count {
                let role = r.string("message role")?;
                let content = r.string("message content")?;
                messages.push(ChatMessage { role, content });
            }
            Some((digest, messages))
        }
        _ => return Err(SessionFileProblem::Malformed("chat flag")),
    };
    if !r.bytes.is_empty() {
        return Err(SessionFileProblem::Malformed("bytes after the chat state"));
    }
    Ok(Restored {
        cache,
        tokens,
        chat,
    })
}

/// Seals `plain` for `session`'s model and writes it atomically.
fn write(path: &Path, key: &StorageKey, session: &Session, plain: &[u8]) -> Result<()> {
    let fail = |p| problem(path, p);
    let digest = bound_digest(path, session)?.get();
    let sealer = Sealer::for_purpose(key, PURPOSE);
    let sealed_len = (plain.len() + sotto_bridge::SEAL_OVERHEAD) as u64;
    let mut file = header(&digest, &sealer.key_check(), sealed_len);
    let sealed = sealer
        .seal(&associated_data(&file), plain)
        .map_err(|e| fail(SessionFileProblem::Write(e)))?;
    file.extend_from_slice(&sealed);
    write_file_atomically(path, &file).map_err(|e| fail(SessionFileProblem::Write(e)))
}

impl Session {
    /// Writes the cached tokens and their keys and values to `path`, sealed
    /// under `key` and bound to the model file (see the module docs); the
    /// file is replaced atomically.
    pub fn save(&self, path: impl AsRef<Path>, key: &StorageKey) -> Result<()> {
        let path = path.as_ref();
        let plain = encode(self, None).map_err(|p| problem(path, p))?;
        write(path, key, self, &plain)
    }

    /// Replaces the cache by the one saved at `path` (by [`Session::save`]
    /// or [`Chat::save`]): the next prompt that extends the saved tokens
    /// prefills only what is new. Refused files are typed
    /// [`Error::SessionFile`] errors and leave the session unchanged.
    pub fn restore(&mut self, path: impl AsRef<Path>, key: &StorageKey) -> Result<()> {
        let restored = read(path.as_ref(), key, self)?;
        self.replace_state(restored.cache, restored.tokens);
        Ok(())
    }
}

impl Chat {
    /// Writes the conversation (messages and the session's cache) to
    /// `path`, sealed under `key` and bound to the model file; restore it
    /// with [`LoadedModel::restore_chat`].
    pub fn save(&self, path: impl AsRef<Path>, key: &StorageKey) -> Result<()> {
        let path = path.as_ref();
        let plain = encode(self.session(), Some((self.template(), self.messages())))
            .map_err(|p| problem(path, p))?;
        write(path, key, self.session(), &plain)
    }

    /// Replaces the conversation by the one saved at `path`; refused files
    /// leave it unchanged.
    pub fn restore(&mut self, path: impl AsRef<Path>, key: &StorageKey) -> Result<()> {
        let path = path.as_ref();
        let restored = read(path, key, self.session())?;
        let Some((template, messages)) = restored.chat else {
            return Err(problem(path, SessionFileProblem::NoChat));
        };
        if template != template_digest(self.template()) {
            return Err(problem(path, SessionFileProblem::OtherTemplate));
        }
        self.session_mut()
            .replace_state(restored.cache, restored.tokens);
        self.set_messages(messages);
        Ok(())
    }
}

impl LoadedModel {
    /// A chat of `context` positions resumed from `path` (written by
    /// [`Chat::save`] for this model): its messages and KV cache, so the
    /// next turn prefills only the new message.
    pub fn restore_chat(
        &self,
        path: impl AsRef<Path>,
        key: &StorageKey,
        context: usize,
    ) -> Result<Chat> {
        let mut chat = self.chat(context, None)?;
        chat.restore(path, key)?;
        Ok(chat)
    }

    /// A session of `context` positions resumed from `path` (written by
    /// [`Session::save`] or [`Chat::save`] for this model).
    pub fn restore_session(
        &self,
        path: impl AsRef<Path>,
        key: &StorageKey,
        context: usize,
    ) -> Result<Session> {
        let mut session = self.session(context)?;
        session.restore(path, key)?;
        Ok(session)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_layout_is_as_documented() {
        let h = header(&[7; 32], &[9; KEY_CHECK_LEN], 1234);
        assert_eq!(h.len(), HEADER_LEN);
        assert_eq!(HEADER_LEN, 66);
        assert_eq!(&h[..8], MAGIC);
        assert_eq!(u16::from_le_bytes([h[8], h[9]]), FORMAT_VERSION);
        assert_eq!(&h[DIGEST_AT..KEY_CHECK_AT], &[7; 32]);
        assert_eq!(&h[KEY_CHECK_AT..SEALED_LEN_AT], &[9; KEY_CHECK_LEN]);
        assert_eq!(h[SEALED_LEN_AT..], 1234u64.to_le_bytes());
    }

    #[test]
    fn the_dtype_byte_records_types_and_rotations() {
        let h = |n| Some(Hadamard::new(n).unwrap());
        // the first files' byte stays f16 / f16
        assert_eq!(
            kv_dtype(KvTypes::default(), KvRotations::default()),
            Some(1)
        );
        for types in ["f16", "q8_0", "q4_0", "q8_0,q4_0", "f16,q4_0", "q4_0,f16"] {
            let types = KvTypes::parse(types).unwrap();
            for head_dim in [64, 96, 128, 192, 256] {
                let rotations = KvRotations::for_cache(types, head_dim);
                let byte = kv_dtype(types, rotations).unwrap();
                assert_eq!(kv_planes_of(byte), Some((types, rotations)), "{byte:#x}");
            }
            // the same types stored as they are get another byte
            let r = KvRotations::for_cache(types, 64);
            if r != KvRotations::default() {
                assert_ne!(kv_dtype(types, r), kv_dtype(types, KvRotations::default()));
            }
        }
        let q4 = KvTypes::both(KvType::Q4_0);
        let r = KvRotations {
            k: h(256),
            v: h(64),
        };
        assert_eq!(kv_dtype(q4, r), Some(0xf7));
        assert_eq!(kv_planes_of(0xf7), Some((q4, r)));
        // no code for a block of 512 (nor 32): refused, never mislabeled
        assert_eq!(kv_dtype(q4, KvRotations { k: h(512), v: None }), None);
        assert_eq!(kv_dtype(q4, KvRotations { k: h(32), v: None }), None);
        assert_eq!(kv_planes_of(0x00), None);
        assert_eq!(kv_planes_of(0x40), None);
    }

    #[test]
    fn file_names_are_keyed_tags() {
        let a = StorageKey::from_bytes([1; 32]);
        let b = StorageKey::from_bytes([2; 32]);
        let name = session_file_name(&a, b"+15551234567.1");
        assert_eq!(name, session_file_name(&a, b"+15551234567.1"));
        assert_ne!(name, session_file_name(&b, b"+15551234567.1"));
        assert_ne!(name, session_file_name(&a, b"+15551234567.2"));
        assert!(!name.contains("1555"));
        assert_eq!(name.len(), 32 + ".session".len());
    }

    #[test]
    fn the_reader_refuses_short_input() {
        let mut r = Reader { bytes: &[1, 0, 0] };
        assert!(matches!(
            r.u32("x"),
            Err(SessionFileProblem::Malformed("x"))
        ));
        let mut r = Reader {
            bytes: &[5, 0, 0, 0, b'a'],
        };
        assert!(r.string("s").is_err());
    }
}
