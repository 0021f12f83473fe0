//! What every entry point returns: a [`SottoStatus`] code, the message of
//! the last call kept per thread, and the guard that turns a panic into
//! [`SottoStatus::Panic`] instead of unwinding into foreign code.

use std::cell::RefCell;
use std::ffi::CString;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// The result of a call. `SOTTO_OK` is 0; every other code has its message
/// in `sotto_last_error_message()` on the calling thread.
///
/// New codes may be added at the end in a later version of the ABI: treat
/// an unknown code as a failure.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SottoStatus {
    /// Success.
    Ok = 0,
    /// A null pointer where one is required, text that is not UTF-8,
    /// options JSON that does not parse or names an unknown field, a
    /// sampling parameter out of range.
    InvalidArgument = 1,
    /// A file or directory given does not exist (model, graphs, state).
    NotFound = 2,
    /// The model file exists but is not a model the engine reads
    /// (not GGUF, truncated, unsupported architecture or tensor type).
    BadModel = 3,
    /// The conversation no longer fits the chat's context; the history is
    /// as it was before the call.
    ContextOverflow = 4,
    /// Cancelled by `sotto_chat_cancel`; the history is as it was before
    /// the call.
    Cancelled = 5,
    /// The backend asked for cannot run in this build or on this device
    /// (feature not compiled in, ONNX Runtime or an EP library missing, a
    /// refused CPU fallback, an instruction set this CPU lacks).
    BackendUnavailable = 6,
    /// The backend failed while running.
    Backend = 7,
    /// Another thread is using this handle right now.
    Busy = 8,
    /// An envelope that does not decrypt: forged, replayed, malformed or
    /// from an unknown session. Nothing was changed.
    BadMessage = 9,
    /// The assistant's state directory cannot be used (wrong key, corrupt
    /// or unreadable files).
    State = 10,
    /// A panic inside the library was caught at the boundary; the handle it
    /// happened on is poisoned.
    Panic = 11,
    /// The handle was poisoned by an earlier panic; free it and open a
    /// new one.
    Poisoned = 12,
    /// Reading or writing a file failed.
    Io = 13,
    /// A failure the other codes do not describe.
    Internal = 14,
    /// An envelope from a peer whose identity key changed: refused, nothing
    /// changed. Compare safety numbers, then
    /// `sotto_assistant_accept_identity`.
    UntrustedIdentity = 15,
    /// A bound of the assistant device would be exceeded (peers, unanswered
    /// messages, unacknowledged replies); nothing changed.
    Limit = 16,
}

/// An error on its way to the boundary: a code and a message (never
/// message text or keys: the engine's and bridge's errors keep those out).
#[derive(Debug)]
pub struct FfiError {
    /// The code the entry point returns.
    pub status: SottoStatus,
    /// The text `sotto_last_error_message` returns.
    pub message: String,
}

impl FfiError {
    /// An error with `status` and `message`.
    pub fn new(status: SottoStatus, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    /// A bad argument.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(SottoStatus::InvalidArgument, message)
    }
}

/// The result of a call inside the boundary.
pub type FfiResult<T> = Result<T, FfiError>;

impl From<sotto_engine::Error> for FfiError {
    fn from(e: sotto_engine::Error) -> Self {
        use sotto_engine::Error as E;
        let status = match &e {
            E::ModelFile {
                source: sotto_models::Error::Io { source, .. },
                ..
            } if source.kind() == std::io::ErrorKind::NotFound => SottoStatus::NotFound,
            E::ModelFile {
                source: sotto_models::Error::Io { .. },
                ..
            } => SottoStatus::Io,
            E::ModelFile { .. } | E::Model(_) => SottoStatus::BadModel,
            E::ContextOverflow { .. } => SottoStatus::ContextOverflow,
            E::Cancelled { .. } => SottoStatus::Cancelled,
            E::InvalidSampling { .. } | E::Empty(_) | E::InvalidDescription(_) => {
                SottoStatus::InvalidArgument
            }
            E::FeatureDisabled { .. } => SottoStatus::BackendUnavailable,
            E::Kernel(sotto_kernels::Error::IsaUnavailable { .. })
            | E::Kernel(sotto_kernels::Error::UnknownIsa { .. }) => SottoStatus::BackendUnavailable,
            #[cfg(feature = "ort")]
            E::Ort { source, .. } => ort_status(source),
            _ => SottoStatus::Backend,
        };
        FfiError::new(status, error_chain(&e))
    }
}

#[cfg(feature = "ort")]
fn ort_status(e: &sotto_engine::ort::Error) -> SottoStatus {
    use sotto_engine::ort::Error as O;
    match e {
        O::LibraryMissing { .. }
        | O::RuntimeLoad { .. }
        | O::EpUnavailable { .. }
        | O::UnknownEp(_)
        | O::BadEpOption { .. }
        | O::DynamicShape { .. }
        | O::FallbackRefused { .. } => SottoStatus::BackendUnavailable,
        O::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            SottoStatus::NotFound
        }
        O::ContextOverflow { .. } => SottoStatus::ContextOverflow,
        _ => SottoStatus::Backend,
    }
}

/// `e` and its sources, outermost first, as one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let next = s.to_string();
        // thiserror messages often already embed their source's text.
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    text
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

/// Keeps `message` as this thread's last error message.
pub fn set_last_error(message: &str) {
    // A NUL inside a message would cut it short in C: keep what precedes it.
    let text = message.split('\0').next().unwrap_or_default();
    let c = CString::new(text).unwrap_or_default();
    LAST_ERROR.with(|m| *m.borrow_mut() = c);
}

/// Runs `f` with the last error pointer of this thread.
pub fn with_last_error<R>(f: impl FnOnce(&CString) -> R) -> R {
    LAST_ERROR.with(|m| f(&m.borrow()))
}

/// The text of a caught panic payload.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_string()
    }
}

/// Runs one entry point's body: clears the thread's last error, catches
/// any panic, records the message of a failure and returns its code.
pub fn guard(body: impl FnOnce() -> FfiResult<()>) -> SottoStatus {
    set_last_error("");
    let outcome = catch_unwind(AssertUnwindSafe(body));
    let err = match outcome {
        Ok(Ok(())) => return SottoStatus::Ok,
        Ok(Err(e)) => e,
        Err(payload) => FfiError::new(
            SottoStatus::Panic,
            format!("panic inside sotto: {}", panic_message(payload.as_ref())),
        ),
    };
    set_last_error(&err.message);
    err.status
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_a_code_and_a_message() {
        let status = guard(|| panic!("on purpose"));
        assert_eq!(status, SottoStatus::Panic);
        let msg = with_last_error(|m| m.to_str().unwrap().to_string());
        assert!(msg.contains("on purpose"), "{msg}");
        assert_eq!(guard(|| Ok(())), SottoStatus::Ok);
        assert!(with_last_error(|m| m.as_bytes().is_empty()));
    }

    #[test]
    fn messages_are_per_thread() {
        let status = guard(|| Err(FfiError::invalid("here")));
        assert_eq!(status, SottoStatus::InvalidArgument);
        std::thread::spawn(|| assert!(with_last_error(|m| m.as_bytes().is_empty())))
            .join()
            .unwrap();
        assert_eq!(with_last_error(|m| m.to_str().unwrap().to_string()), "here");
    }

    #[test]
    fn engine_errors_map_to_their_codes() {
        let missing = sotto_engine::LoadedModel::open(
            "/nonexistent/model.gguf",
            sotto_engine::BackendChoice::default(),
        )
        .unwrap_err();
        let e = FfiError::from(missing);
        assert_eq!(e.status, SottoStatus::NotFound);
        assert!(
            e.message.contains("/nonexistent/model.gguf"),
            "{}",
            e.message
        );
        let overflow = sotto_engine::Error::ContextOverflow {
            prompt_tokens: 10,
            cached: 0,
            reserve: 1,
            context: 8,
        };
        assert_eq!(
            FfiError::from(overflow).status,
            SottoStatus::ContextOverflow
        );
    }
}
