//! The C ABI (`include/sotto.h` is generated from this file and
//! `status.rs` by cbindgen). Every entry point runs inside
//! [`guard`](crate::status::guard): a panic becomes `SOTTO_STATUS_PANIC`,
//! never an unwind into the caller.
//!
//! Handles and threads:
//! - `SottoModel`: immutable once open; any thread may use it, several at
//!   once (open chats on it from several threads). Chats keep the model
//!   alive: it may be freed while chats are still open.
//! - `SottoChat`: one call at a time (`send`, `reset`; a second concurrent
//!   one returns `SOTTO_STATUS_BUSY`), from any thread; `sotto_chat_cancel`
//!   may be called from any thread at any time while the handle is alive.
//! - `SottoAssistant`: one call at a time, from any thread.
//! - Free a handle only when no other call on it is running.

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
    static VERSION: &CStr = match CStr::from_bytes_with_nul(
        concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes(),
    ) {
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
/// "graphs":"DIR", "ep_chain":"qnn,cpu", "npu_only":false}`.
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
