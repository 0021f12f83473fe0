//! The C ABI (`include/sotto.h` is generated from this file and
//! `status.rs` by cbindgen). Every entry point runs inside
//! [`guard`]: a panic becomes `SOTTO_STATUS_PANIC`,
//! never an unwind into the caller.
//!
//! Handles and threads:
//! - `SottoModel`: immutable once open; any thread may use it, several at
//!   once (open chats on it from several threads). Chats keep the model
//!   alive: it may be freed while chats are still open.
//! - `SottoChat`: one call at a time (`send`, `reset`; a second concurrent
//!   one returns `SOTTO_STATUS_BUSY`), from any thread; `sotto_chat_cancel`
//!   may be called from any thread at any time while the handle is alive.
//! - `SottoAssistant`: one call at a time (a second concurrent one returns
//!   `SOTTO_STATUS_BUSY`), from any thread. It keeps its model alive.
//! - Free a handle only when no other call on it is running.

use crate::assistant::{envelope_kind, kind_code, AssistantHandle};
use crate::chat::{ChatHandle, ModelHandle};
use crate::status::{guard, with_last_error, FfiError, FfiResult, SottoStatus};
use std::ffi::{c_char, c_void, CStr, CString};
use std::sync::Arc;

/// The ABI version this library implements. It changes only when an
/// existing function, struct or code changes meaning; additions keep it.
pub const SOTTO_ABI_VERSION: u32 = 1;

/// A loaded model (weights, tokenizer, chat template, backend).
#[derive(Debug)]
pub struct SottoModel(Arc<ModelHandle>);

/// One conversation on a model, with its own KV cache and history.
#[derive(Debug)]
pub struct SottoChat(ChatHandle);

/// An assistant device answered by a model: identity, prekeys, sessions
/// and conversations, in a state directory sealed under a key.
#[derive(Debug)]
pub struct SottoAssistant(AssistantHandle);

/// `kind` of an envelope that starts a session (a PreKeySignalMessage).
pub const SOTTO_ENVELOPE_PREKEY: u32 = 1;
/// `kind` of an envelope inside a session (a SignalMessage).
pub const SOTTO_ENVELOPE_MESSAGE: u32 = 2;

/// A reply envelope for the transport, valid only during the callback
/// that receives it.
#[repr(C)]
#[derive(Debug)]
pub struct SottoReply {
    /// The peer it goes to (NUL-terminated).
    pub peer: *const c_char,
    /// The peer's device id.
    pub device_id: u32,
    /// The number of the peer's message it answers in their conversation
    /// (1, 2, ...).
    pub turn: u64,
    /// `SOTTO_ENVELOPE_PREKEY` or `SOTTO_ENVELOPE_MESSAGE`.
    pub kind: u32,
    /// The envelope's bytes, as the transport carries them.
    pub body: *const u8,
    /// Length of `body`.
    pub body_len: usize,
    /// NULL for an answer; for a refusal sent instead (`"message_too_long"`,
    /// `"assistant_failed"`), its kind.
    pub refusal: *const c_char,
}

/// Receives a reply envelope on the thread of the call that produced it.
/// Return true once the transport has it (it leaves the outbox); false
/// keeps it in the outbox for `sotto_assistant_outbox`. May be NULL.
pub type SottoReplyFn =
    Option<extern "C" fn(user_data: *mut c_void, reply: *const SottoReply) -> bool>;

/// Receives each piece of an answer as it is generated: `piece` is
/// `len` bytes of whole UTF-8 characters followed by a NUL, valid only
/// during the call. Runs on the thread that called `sotto_chat_send`.
/// May be NULL.
pub type SottoPieceFn =
    Option<extern "C" fn(user_data: *mut c_void, piece: *const c_char, len: usize)>;

/// `p` as UTF-8 text; `what` names the argument in the error.
///
/// # Safety
/// `p` is null or a NUL-terminated string valid for the call.
pub(crate) unsafe fn text_arg<'a>(p: *const c_char, what: &str) -> FfiResult<&'a str> {
    if p.is_null() {
        return Err(FfiError::invalid(format!("{what} is NULL")));
    }
    // SAFETY: non-null, and the caller promises a NUL-terminated string
    // that outlives the call.
    let c = unsafe { CStr::from_ptr(p) };
    c.to_str()
        .map_err(|_| FfiError::invalid(format!("{what} is not UTF-8")))
}

/// Like [`text_arg`], with NULL meaning absent.
///
/// # Safety
/// As [`text_arg`].
pub(crate) unsafe fn optional_text_arg<'a>(
    p: *const c_char,
    what: &str,
) -> FfiResult<Option<&'a str>> {
    if p.is_null() {
        Ok(None)
    } else {
        // SAFETY: forwarded from the caller.
        unsafe { text_arg(p, what) }.map(Some)
    }
}

/// Stores `value` in `*out` (boxed), or NULL on failure.
///
/// # Safety
/// `out` is null (refused) or valid for one pointer write.
unsafe fn put<T>(out: *mut *mut T, value: impl FnOnce() -> FfiResult<T>) -> SottoStatus {
    if out.is_null() {
        return guard(|| Err(FfiError::invalid("out is NULL")));
    }
    // SAFETY: `out` is non-null and the caller promises it is writable.
    unsafe { *out = std::ptr::null_mut() };
    guard(|| {
        let boxed = Box::into_raw(Box::new(value()?));
        // SAFETY: as above.
        unsafe { *out = boxed };
        Ok(())
    })
}

/// A heap copy of `text` for the caller (freed with `sotto_string_free`).
pub(crate) fn c_string(text: &str) -> FfiResult<*mut c_char> {
    CString::new(text)
        .map(CString::into_raw)
        .map_err(|_| FfiError::new(SottoStatus::Internal, "text with a NUL byte"))
}

/// The library version, `"MAJOR.MINOR.PATCH"` (static, never freed).
#[no_mangle]
pub extern "C" fn sotto_version() -> *const c_char {
    static VERSION: &CStr =
        match CStr::from_bytes_with_nul(concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes()) {
            Ok(v) => v,
            Err(_) => c"unknown",
        };
    VERSION.as_ptr()
}

/// [`SOTTO_ABI_VERSION`] of the library actually loaded: compare it with
/// the header's `SOTTO_ABI_VERSION` at start-up.
#[no_mangle]
pub extern "C" fn sotto_abi_version() -> u32 {
    SOTTO_ABI_VERSION
}

/// The message of the last call made on this thread ("" after a success).
/// Valid until the next sotto call on this thread; never freed by the caller.
#[no_mangle]
pub extern "C" fn sotto_last_error_message() -> *const c_char {
    with_last_error(|m| m.as_ptr())
}

/// Loads the GGUF model at `path` and opens its backend.
///
/// `options_json` (may be NULL) picks the backend, every field optional:
/// `{"backend":"cpu"|"ort"|"hybrid"|"candle", "threads":0, "isa":"neon",
/// "graphs":"DIR", "ep_chain":"qnn,cpu", "npu_only":false,
/// "packed_cache":"DIR"}` (`packed_cache`: where the CPU kernels' repacked
/// weights are cached between starts, the app's cache directory; `""`: off).
/// On success `*out` is a model to free with `sotto_model_free`; on failure
/// it is NULL. Codes: NOT_FOUND, BAD_MODEL, IO, INVALID_ARGUMENT,
/// BACKEND_UNAVAILABLE.
///
/// # Safety
/// `path` and `options_json` are NUL-terminated strings (or NULL); `out` is
/// writable.
#[no_mangle]
pub unsafe extern "C" fn sotto_model_open(
    path: *const c_char,
    options_json: *const c_char,
    out: *mut *mut SottoModel,
) -> SottoStatus {
    // SAFETY: the caller's promises are forwarded unchanged.
    unsafe {
        put(out, || {
            let path = text_arg(path, "path")?;
            let options = optional_text_arg(options_json, "options_json")?;
            Ok(SottoModel(ModelHandle::open(path, options)?))
        })
    }
}

/// Frees a model (NULL is ignored). Open chats keep what they need.
///
/// # Safety
/// `model` came from `sotto_model_open`, is freed once, and no call on it
/// is running.
#[no_mangle]
pub unsafe extern "C" fn sotto_model_free(model: *mut SottoModel) {
    if !model.is_null() {
        // SAFETY: a pointer from Box::into_raw in `put`, freed once.
        let model = unsafe { Box::from_raw(model) };
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(model)));
    }
}

/// Opens a conversation on `model`.
///
/// `options_json` (may be NULL), every field optional: `{"system":"…",
/// "context":2048, "max_tokens":512, "temperature":0.8, "top_k":40,
/// "top_p":0.95, "min_p":0.05, "repeat_penalty":1.0, "seed":N,
/// "stop":["…"]}`; temperature 0 is greedy.
///
/// # Safety
/// `model` is a live model; `options_json` a NUL-terminated string or
/// NULL; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn sotto_chat_open(
    model: *const SottoModel,
    options_json: *const c_char,
    out: *mut *mut SottoChat,
) -> SottoStatus {
    // SAFETY: the caller's promises are forwarded unchanged.
    unsafe {
        put(out, || {
            let model = model_ref(model)?;
            let options = optional_text_arg(options_json, "options_json")?;
            Ok(SottoChat(ChatHandle::open(&model.0, options)?))
        })
    }
}

/// # Safety
/// `model` is null or a live model.
unsafe fn model_ref<'a>(model: *const SottoModel) -> FfiResult<&'a SottoModel> {
    // SAFETY: the caller promises a live model or null.
    unsafe { model.as_ref() }.ok_or_else(|| FfiError::invalid("model is NULL"))
}

/// # Safety
/// `chat` is null or a live chat.
unsafe fn chat_ref<'a>(chat: *const SottoChat) -> FfiResult<&'a SottoChat> {
    // SAFETY: the caller promises a live chat or null.
    unsafe { chat.as_ref() }.ok_or_else(|| FfiError::invalid("chat is NULL"))
}

/// Sends the user's `message` and generates the answer, calling
/// `on_piece(user_data, piece, len)` (may be NULL) with each new piece on
/// this thread. If `reply` is not NULL, `*reply` receives the whole answer
/// (free it with `sotto_string_free`), or NULL on failure. A failed or
/// cancelled call leaves the conversation as it was. Codes:
/// CONTEXT_OVERFLOW, CANCELLED, BUSY, BACKEND, PANIC, POISONED.
///
/// # Safety
/// `chat` is a live chat; `message` a NUL-terminated string; `reply` NULL
/// or writable; `on_piece` (if set) safe to call with `user_data`.
#[no_mangle]
pub unsafe extern "C" fn sotto_chat_send(
    chat: *const SottoChat,
    message: *const c_char,
    on_piece: SottoPieceFn,
    user_data: *mut c_void,
    reply: *mut *mut c_char,
) -> SottoStatus {
    if !reply.is_null() {
        // SAFETY: the caller promises `reply` is writable when not NULL.
        unsafe { *reply = std::ptr::null_mut() };
    }
    guard(|| {
        // SAFETY: the caller's promises are forwarded unchanged.
        let (chat, message) = unsafe { (chat_ref(chat)?, text_arg(message, "message")?) };
        let mut piece_buf = Vec::new();
        let mut on_text = |piece: &str| {
            if let Some(f) = on_piece {
                piece_buf.clear();
                piece_buf.extend_from_slice(piece.as_bytes());
                piece_buf.push(0);
                f(user_data, piece_buf.as_ptr().cast(), piece.len());
            }
        };
        let text = chat.0.send(message, &mut on_text)?;
        if !reply.is_null() {
            let copy = c_string(&text)?;
            // SAFETY: as above.
            unsafe { *reply = copy };
        }
        Ok(())
    })
}

/// Cancels the `sotto_chat_send` running on `chat` in another thread: it
/// returns `SOTTO_STATUS_CANCELLED` soon after (at the next token). Does
/// nothing when no send is running. Safe from any thread.
///
/// # Safety
/// `chat` is a live chat.
#[no_mangle]
pub unsafe extern "C" fn sotto_chat_cancel(chat: *const SottoChat) -> SottoStatus {
    // SAFETY: the caller's promise is forwarded unchanged.
    guard(|| unsafe { chat_ref(chat) }?.0.cancel())
}

/// Forgets the conversation's turns (the system message stays).
///
/// # Safety
/// `chat` is a live chat.
#[no_mangle]
pub unsafe extern "C" fn sotto_chat_reset(chat: *const SottoChat) -> SottoStatus {
    // SAFETY: the caller's promise is forwarded unchanged.
    guard(|| unsafe { chat_ref(chat) }?.0.reset())
}

/// Frees a chat (NULL is ignored).
///
/// # Safety
/// `chat` came from `sotto_chat_open`, is freed once, and no call on it is
/// running.
#[no_mangle]
pub unsafe extern "C" fn sotto_chat_free(chat: *mut SottoChat) {
    if !chat.is_null() {
        // SAFETY: a pointer from Box::into_raw in `put`, freed once.
        let chat = unsafe { Box::from_raw(chat) };
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(chat)));
    }
}

/// Frees a string returned by this library (NULL is ignored).
///
/// # Safety
/// `s` came from this library and is freed once.
#[no_mangle]
pub unsafe extern "C" fn sotto_string_free(s: *mut c_char) {
    if !s.is_null() {
        // SAFETY: a pointer from CString::into_raw, freed once.
        drop(unsafe { CString::from_raw(s) });
    }
}

/// # Safety
/// `assistant` is null or a live assistant.
unsafe fn assistant_ref<'a>(assistant: *const SottoAssistant) -> FfiResult<&'a AssistantHandle> {
    // SAFETY: the caller promises a live assistant or null.
    unsafe { assistant.as_ref() }
        .map(|a| &a.0)
        .ok_or_else(|| FfiError::invalid("assistant is NULL"))
}

/// `len` bytes at `p` (NULL allowed when `len` is 0).
///
/// # Safety
/// `p` is valid for `len` bytes for the call.
unsafe fn bytes_arg<'a>(p: *const u8, len: usize, what: &str) -> FfiResult<&'a [u8]> {
    if len == 0 {
        return Ok(&[]);
    }
    if p.is_null() {
        return Err(FfiError::invalid(format!("{what} is NULL")));
    }
    // SAFETY: non-null, and the caller promises `len` readable bytes.
    Ok(unsafe { std::slice::from_raw_parts(p, len) })
}

/// Writes `value` to `*out` when `out` is not NULL.
///
/// # Safety
/// `out` is null or writable.
unsafe fn write_out<T>(out: *mut T, value: T) {
    if !out.is_null() {
        // SAFETY: the caller promises `out` is writable when not NULL.
        unsafe { *out = value };
    }
}

/// Calls `on_reply` with each reply as a [`SottoReply`]; returns what it
/// decided (false without a callback).
fn reply_sink(
    on_reply: SottoReplyFn,
    user_data: *mut c_void,
) -> impl FnMut(&sotto_bridge::OutgoingReply) -> bool {
    move |reply| {
        let Some(f) = on_reply else { return false };
        // Names and refusal kinds never hold NUL; an odd one is delivered
        // as "" rather than dropped.
        let peer = CString::new(reply.turn.peer.name.as_str()).unwrap_or_default();
        let refusal = reply
            .refusal
            .as_ref()
            .map(|r| CString::new(r.kind()).unwrap_or_default());
        let view = SottoReply {
            peer: peer.as_ptr(),
            device_id: reply.turn.peer.device_id,
            turn: reply.turn.turn,
            kind: kind_code(reply.envelope.kind),
            body: reply.envelope.body.as_ptr(),
            body_len: reply.envelope.body.len(),
            refusal: refusal.as_ref().map_or(std::ptr::null(), |r| r.as_ptr()),
        };
        f(user_data, &view)
    }
}

/// Opens the assistant device kept in `state_dir` under the 32-byte `key`
/// (a new identity when the directory holds no device yet), or one in
/// memory when `state_dir` is NULL (`key` then ignored), answered by
/// `model`.
///
/// `options_json` (may be NULL), every field optional:
/// `{"name":"sotto", "warm_conversations":4, "chat":{…}}`: `name` is this
/// device's account name in safety numbers, `chat` takes the options of
/// `sotto_chat_open` except `stop` (default system message "You are a
/// helpful assistant.", greedy). Codes: STATE (wrong key, corrupt, rolled
/// back or locked by another process), IO, INVALID_ARGUMENT.
///
/// # Safety
/// `model` is a live model; `state_dir`, `options_json` NUL-terminated or
/// NULL; `key` valid for `key_len` bytes; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn sotto_assistant_open(
    model: *const SottoModel,
    state_dir: *const c_char,
    key: *const u8,
    key_len: usize,
    options_json: *const c_char,
    out: *mut *mut SottoAssistant,
) -> SottoStatus {
    // SAFETY: the caller's promises are forwarded unchanged.
    unsafe {
        put(out, || {
            let model = model_ref(model)?;
            let dir = optional_text_arg(state_dir, "state_dir")?;
            let options = optional_text_arg(options_json, "options_json")?;
            let key = match dir {
                None => None,
                Some(_) => Some(
                    <[u8; 32]>::try_from(bytes_arg(key, key_len, "key")?).map_err(|_| {
                        FfiError::invalid(format!("key is {key_len} bytes; it must be 32"))
                    })?,
                ),
            };
            Ok(SottoAssistant(AssistantHandle::open(
                &model.0, dir, key, options,
            )?))
        })
    }
}

/// A prekey bundle for one new peer to start a session with, as JSON:
/// `{"registration_id", "device_id", "pre_key_id", "pre_key",
/// "signed_pre_key_id", "signed_pre_key", "signed_pre_key_signature",
/// "identity_key"}` (ids as numbers, keys in base64 of their Signal
/// serialization). Each call hands out a one-time prekey no one got
/// before. Free `*bundle_json` with `sotto_string_free`.
///
/// # Safety
/// `assistant` is a live assistant; `bundle_json` writable.
#[no_mangle]
pub unsafe extern "C" fn sotto_assistant_prekey_bundle(
    assistant: *const SottoAssistant,
    bundle_json: *mut *mut c_char,
) -> SottoStatus {
    if bundle_json.is_null() {
        return guard(|| Err(FfiError::invalid("bundle_json is NULL")));
    }
    // SAFETY: checked non-null; the caller promises it is writable.
    unsafe { *bundle_json = std::ptr::null_mut() };
    guard(|| {
        // SAFETY: the caller's promise is forwarded unchanged.
        let json = unsafe { assistant_ref(assistant) }?.prekey_bundle()?;
        let copy = c_string(&json)?;
        // SAFETY: as above.
        unsafe { *bundle_json = copy };
        Ok(())
    })
}

/// Hands in the envelope `body` (`kind` SOTTO_ENVELOPE_PREKEY or
/// SOTTO_ENVELOPE_MESSAGE) that `sender` (device `device_id`) sent: it is
/// decrypted and journaled, answered by the model, and the encrypted reply
/// (with any older reply of the same conversation a crash left unsent) is
/// passed to `on_reply` on this thread before the call returns.
///
/// A message that does not decrypt (forged, replayed, malformed, unknown
/// session) returns BAD_MESSAGE and changes nothing: the session goes on.
/// An envelope handed in again is recognized and its reply delivered
/// again while it is in the outbox. Codes: BAD_MESSAGE, UNTRUSTED_IDENTITY,
/// LIMIT, BUSY, STATE, IO.
///
/// # Safety
/// `assistant` is a live assistant; `sender` NUL-terminated; `body` valid
/// for `body_len` bytes; `on_reply` (if set) safe to call with `user_data`.
#[no_mangle]
pub unsafe extern "C" fn sotto_assistant_handle(
    assistant: *const SottoAssistant,
    sender: *const c_char,
    device_id: u32,
    kind: u32,
    body: *const u8,
    body_len: usize,
    on_reply: SottoReplyFn,
    user_data: *mut c_void,
) -> SottoStatus {
    guard(|| {
        // SAFETY: the caller's promises are forwarded unchanged.
        let (assistant, sender, body) = unsafe {
            (
                assistant_ref(assistant)?,
                text_arg(sender, "sender")?,
                bytes_arg(body, body_len, "body")?,
            )
        };
        let envelope = sotto_bridge::Envelope {
            kind: envelope_kind(kind)?,
            body: body.to_vec(),
        };
        assistant.handle(
            sender,
            device_id,
            envelope,
            &mut reply_sink(on_reply, user_data),
        )
    })
}

/// Passes every reply still in the outbox (not accepted by an earlier
/// callback, including from before a restart) to `on_reply`, per
/// conversation in turn order. `*delivered` (may be NULL) receives how
/// many the callback accepted.
///
/// # Safety
/// `assistant` is a live assistant; `on_reply` (if set) safe to call with
/// `user_data`; `delivered` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn sotto_assistant_outbox(
    assistant: *const SottoAssistant,
    on_reply: SottoReplyFn,
    user_data: *mut c_void,
    delivered: *mut usize,
) -> SottoStatus {
    // SAFETY: the caller promises `delivered` is writable when not NULL.
    unsafe { write_out(delivered, 0) };
    guard(|| {
        // SAFETY: the caller's promise is forwarded unchanged.
        let n =
            unsafe { assistant_ref(assistant) }?.outbox(&mut reply_sink(on_reply, user_data))?;
        // SAFETY: as above.
        unsafe { write_out(delivered, n) };
        Ok(())
    })
}

/// The safety number of the session with `peer` (device `device_id`): 60
/// digits the users compare on both devices. Free `*number` with
/// `sotto_string_free`. Codes: BAD_MESSAGE (no session with that peer).
///
/// # Safety
/// `assistant` is a live assistant; `peer` NUL-terminated; `number`
/// writable.
#[no_mangle]
pub unsafe extern "C" fn sotto_assistant_safety_number(
    assistant: *const SottoAssistant,
    peer: *const c_char,
    device_id: u32,
    number: *mut *mut c_char,
) -> SottoStatus {
    if number.is_null() {
        return guard(|| Err(FfiError::invalid("number is NULL")));
    }
    // SAFETY: checked non-null; the caller promises it is writable.
    unsafe { *number = std::ptr::null_mut() };
    guard(|| {
        // SAFETY: the caller's promises are forwarded unchanged.
        let (assistant, peer) = unsafe { (assistant_ref(assistant)?, text_arg(peer, "peer")?) };
        let copy = c_string(&assistant.safety_number(peer, device_id)?)?;
        // SAFETY: as above.
        unsafe { *number = copy };
        Ok(())
    })
}

/// Trusts the new identity key `peer` presented in an envelope that was
/// refused with UNTRUSTED_IDENTITY (call it after the users compared the
/// new safety number); its next envelope is accepted. Codes: NOT_FOUND
/// (no new identity was presented by that peer since the assistant was
/// opened).
///
/// # Safety
/// `assistant` is a live assistant; `peer` NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn sotto_assistant_accept_identity(
    assistant: *const SottoAssistant,
    peer: *const c_char,
    device_id: u32,
) -> SottoStatus {
    guard(|| {
        // SAFETY: the caller's promises are forwarded unchanged.
        let (assistant, peer) = unsafe { (assistant_ref(assistant)?, text_arg(peer, "peer")?) };
        assistant.accept_identity(peer, device_id)
    })
}

/// Replaces the signed prekey now (bundles published later carry the new
/// one; the previous one keeps accepting new sessions for a grace period).
/// `*id` (may be NULL) receives the new signed prekey's id.
///
/// # Safety
/// `assistant` is a live assistant; `id` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn sotto_assistant_rotate_signed_prekey(
    assistant: *const SottoAssistant,
    id: *mut u32,
) -> SottoStatus {
    guard(|| {
        // SAFETY: the caller's promise is forwarded unchanged.
        let new_id = unsafe { assistant_ref(assistant) }?.rotate_signed_prekey()?;
        // SAFETY: the caller promises `id` is writable when not NULL.
        unsafe { write_out(id, new_id) };
        Ok(())
    })
}

/// Frees an assistant (NULL is ignored); its state directory keeps
/// everything committed.
///
/// # Safety
/// `assistant` came from `sotto_assistant_open`, is freed once, and no call
/// on it is running.
#[no_mangle]
pub unsafe extern "C" fn sotto_assistant_free(assistant: *mut SottoAssistant) {
    if !assistant.is_null() {
        // SAFETY: a pointer from Box::into_raw in `put`, freed once.
        let assistant = unsafe { Box::from_raw(assistant) };
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(assistant)));
    }
}
