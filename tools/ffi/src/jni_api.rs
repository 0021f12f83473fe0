//! The JNI binding (feature `jni`): the native methods of
//! `org.sotto.Native`, over the same handles as the C ABI. Java holds each
//! handle as a `long` (a `Box` pointer) inside `Model`, `Chat` and
//! `Assistant`, which guard it with a read-write lock so `close()` never
//! races a running call. Failures throw `org.sotto.SottoException` with the
//! C ABI's status code; a panic is caught here and thrown as one with code
//! `PANIC`.

use crate::assistant::{envelope_kind, kind_code, AssistantHandle};
use crate::chat::{ChatHandle, ModelHandle};
use crate::status::{panic_message, FfiError, FfiResult, SottoStatus};
use jni::objects::{JByteArray, JClass, JObject, JString, JThrowable, JValue};
use jni::sys::{jint, jlong};
use jni::{jni_sig, jni_str, Env, EnvUnowned};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

/// Throws `SottoException(code, message)`.
fn throw(env: &mut Env<'_>, err: &FfiError) -> jni::errors::Result<()> {
    let message = env.new_string(&err.message)?;
    let exception = env.new_object(
        jni_str!("org/sotto/SottoException"),
        jni_sig!("(ILjava/lang/String;)V"),
        &[JValue::Int(err.status as jint), JValue::Object(&message)],
    )?;
    let exception = env.cast_local::<JThrowable<'_>>(exception)?;
    env.throw(exception)
}

/// Runs a native method's body: our errors and panics become a
/// `SottoException`, JNI's own failures a `RuntimeException`, and the
/// method returns `T::default()` while the exception is pending.
fn run<'local, T: Default + 'local>(
    env: &mut EnvUnowned<'local>,
    body: impl FnOnce(&mut Env<'local>) -> FfiResult<T>,
) -> T {
    env.with_env(|env| -> jni::errors::Result<T> {
        let outcome = catch_unwind(AssertUnwindSafe(|| body(env)));
        let err = match outcome {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(e)) => e,
            Err(payload) => FfiError::new(
                SottoStatus::Panic,
                format!("panic inside sotto: {}", panic_message(payload.as_ref())),
            ),
        };
        // A Java exception already pending (thrown by a listener) wins.
        if !env.exception_check() {
            throw(env, &err)?;
        }
        Ok(T::default())
    })
    .resolve::<jni::errors::ThrowRuntimeExAndDefault>()
}

fn text(env: &Env<'_>, s: &JString<'_>, what: &str) -> FfiResult<String> {
    if s.is_null() {
        return Err(FfiError::invalid(format!("{what} is null")));
    }
    s.try_to_string(env)
        .map_err(|e| FfiError::invalid(format!("{what}: {e}")))
}

fn optional_text(env: &Env<'_>, s: &JString<'_>, what: &str) -> FfiResult<Option<String>> {
    if s.is_null() {
        Ok(None)
    } else {
        text(env, s, what).map(Some)
    }
}

fn jni_failure(e: jni::errors::Error) -> FfiError {
    FfiError::new(SottoStatus::Internal, format!("JNI: {e}"))
}

/// # Safety
/// `handle` is 0 or a live pointer made by `modelOpen`.
unsafe fn model<'a>(handle: jlong) -> FfiResult<&'a Arc<ModelHandle>> {
    // SAFETY: Java keeps the pointer `modelOpen` returned until `modelFree`,
    // and its lock keeps calls from overlapping the free.
    unsafe { (handle as *const Arc<ModelHandle>).as_ref() }
        .ok_or_else(|| FfiError::invalid("the model is closed"))
}

/// # Safety
/// `handle` is 0 or a live pointer made by `chatOpen`.
unsafe fn chat<'a>(handle: jlong) -> FfiResult<&'a ChatHandle> {
    // SAFETY: as for `model`, with `chatOpen`/`chatFree`.
    unsafe { (handle as *const ChatHandle).as_ref() }
        .ok_or_else(|| FfiError::invalid("the chat is closed"))
}

/// # Safety
/// `handle` is 0 or a live pointer made by `assistantOpen`.
unsafe fn assistant<'a>(handle: jlong) -> FfiResult<&'a AssistantHandle> {
    // SAFETY: as for `model`, with `assistantOpen`/`assistantFree`.
    unsafe { (handle as *const AssistantHandle).as_ref() }
        .ok_or_else(|| FfiError::invalid("the assistant is closed"))
}

fn bytes(env: &Env<'_>, array: &JByteArray<'_>, what: &str) -> FfiResult<Vec<u8>> {
    if array.is_null() {
        return Err(FfiError::invalid(format!("{what} is null")));
    }
    env.convert_byte_array(array).map_err(jni_failure)
}

/// Builds an `org.sotto.Reply` for `reply` and asks `listener` whether the
/// transport has it. A listener that throws (or a JNI failure) keeps the
/// reply in the outbox; the exception stays pending and later replies are
/// not offered.
fn offer_reply<'local>(
    env: &mut Env<'local>,
    listener: &JObject<'local>,
    stopped: &mut bool,
    reply: &sotto_bridge::OutgoingReply,
) -> bool {
    if listener.is_null() || *stopped {
        return false;
    }
    let accepted = env.with_local_frame(8, |env| -> jni::errors::Result<bool> {
        let peer = env.new_string(&reply.turn.peer.name)?;
        let body = env.byte_array_from_slice(&reply.envelope.body)?;
        let refusal = match &reply.refusal {
            Some(r) => JObject::from(env.new_string(r.kind())?),
            None => JObject::null(),
        };
        let object = env.new_object(
            jni_str!("org/sotto/Reply"),
            jni_sig!("(Ljava/lang/String;IJI[BLjava/lang/String;)V"),
            &[
                JValue::Object(&peer),
                JValue::Int(reply.turn.peer.device_id as jint),
                JValue::Long(reply.turn.turn as jlong),
                JValue::Int(kind_code(reply.envelope.kind) as jint),
                JValue::Object(&body),
                JValue::Object(&refusal),
            ],
        )?;
        env.call_method(
            listener,
            jni_str!("onReply"),
            jni_sig!("(Lorg/sotto/Reply;)Z"),
            &[JValue::Object(&object)],
        )?
        .z()
    });
    accepted.unwrap_or_else(|_| {
        *stopped = true;
        false
    })
}

/// `String Native.version()`.
#[no_mangle]
pub extern "system" fn Java_org_sotto_Native_version<'local>(
    mut env: EnvUnowned<'local>,
    _class: JClass<'local>,
) -> JString<'local> {
    run(&mut env, |env| {
        env.new_string(env!("CARGO_PKG_VERSION"))
            .map_err(jni_failure)
    })
}

/// `int Native.abiVersion()`.
#[no_mangle]
pub extern "system" fn Java_org_sotto_Native_abiVersion<'local>(
    _env: EnvUnowned<'local>,
    _class: JClass<'local>,
) -> jint {
    crate::c_api::SOTTO_ABI_VERSION as jint
}

/// `long Native.modelOpen(String path, String optionsJson)`.
#[no_mangle]
pub extern "system" fn Java_org_sotto_Native_modelOpen<'local>(
    mut env: EnvUnowned<'local>,
    _class: JClass<'local>,
    path: JString<'local>,
    options: JString<'local>,
) -> jlong {
    run(&mut env, |env| {
        let path = text(env, &path, "path")?;
        let options = optional_text(env, &options, "optionsJson")?;
        let handle = ModelHandle::open(&path, options.as_deref())?;
        Ok(Box::into_raw(Box::new(handle)) as jlong)
    })
}

/// `void Native.modelFree(long model)`.
#[no_mangle]
pub extern "system" fn Java_org_sotto_Native_modelFree<'local>(
    mut env: EnvUnowned<'local>,
    _class: JClass<'local>,
    handle: jlong,
) {
    run(&mut env, |_| {
        if handle != 0 {
            // SAFETY: made by `modelOpen`; Java frees it once, under its
            // write lock.
            drop(unsafe { Box::from_raw(handle as *mut Arc<ModelHandle>) });
        }
        Ok(())
    })
}

/// `String Native.modelDescribe(long model)`.
#[no_mangle]
pub extern "system" fn Java_org_sotto_Native_modelDescribe<'local>(
    mut env: EnvUnowned<'local>,
    _class: JClass<'local>,
    handle: jlong,
) -> JString<'local> {
    run(&mut env, |env| {
        // SAFETY: see `model`.
        let m = unsafe { model(handle) }?;
        env.new_string(m.describe()).map_err(jni_failure)
    })
}

/// `long Native.chatOpen(long model, String optionsJson)`.
#[no_mangle]
pub extern "system" fn Java_org_sotto_Native_chatOpen<'local>(
    mut env: EnvUnowned<'local>,
    _class: JClass<'local>,
    model_handle: jlong,
    options: JString<'local>,
) -> jlong {
    run(&mut env, |env| {
        let options = optional_text(env, &options, "optionsJson")?;
        // SAFETY: see `model`.
        let m = unsafe { model(model_handle) }?;
        let chat = ChatHandle::open(m, options.as_deref())?;
        Ok(Box::into_raw(Box::new(chat)) as jlong)
    })
}

/// `String Native.chatSend(long chat, String message, PieceListener listener)`:
/// the listener (may be null) gets each piece on the calling thread; if it
/// throws, generation stops and its exception propagates.
#[no_mangle]
pub extern "system" fn Java_org_sotto_Native_chatSend<'local>(
    mut env: EnvUnowned<'local>,
    _class: JClass<'local>,
    handle: jlong,
    message: JString<'local>,
    listener: JObject<'local>,
) -> JString<'local> {
    run(&mut env, |env| {
        // SAFETY: see `chat`.
        let chat = unsafe { chat(handle) }?;
        let message = text(env, &message, "message")?;
        let mut listener_threw = false;
        let mut on_piece = |piece: &str| {
            if listener.is_null() || listener_threw {
                return;
            }
            let delivered = env.with_local_frame(4, |env| -> jni::errors::Result<()> {
                let piece = env.new_string(piece)?;
                env.call_method(
                    &listener,
                    jni_str!("onPiece"),
                    jni_sig!("(Ljava/lang/String;)V"),
                    &[JValue::Object(&piece)],
                )?;
                Ok(())
            });
            if delivered.is_err() {
                // Stop generating; the Java exception stays pending.
                listener_threw = true;
                let _ = chat.cancel();
            }
        };
        let reply = chat.send(&message, &mut on_piece)?;
        env.new_string(reply).map_err(jni_failure)
    })
}

/// `void Native.chatCancel(long chat)`: from any thread.
#[no_mangle]
pub extern "system" fn Java_org_sotto_Native_chatCancel<'local>(
    mut env: EnvUnowned<'local>,
    _class: JClass<'local>,
    handle: jlong,
) {
    // SAFETY: see `chat`.
    run(&mut env, |_| unsafe { chat(handle) }?.cancel())
}

/// `void Native.chatReset(long chat)`.
#[no_mangle]
pub extern "system" fn Java_org_sotto_Native_chatReset<'local>(
    mut env: EnvUnowned<'local>,
    _class: JClass<'local>,
    handle: jlong,
) {
    // SAFETY: see `chat`.
    run(&mut env, |_| unsafe { chat(handle) }?.reset())
}

/// `void Native.chatFree(long chat)`.
#[no_mangle]
pub extern "system" fn Java_org_sotto_Native_chatFree<'local>(
    mut env: EnvUnowned<'local>,
    _class: JClass<'local>,
    handle: jlong,
) {
    run(&mut env, |_| {
        if handle != 0 {
            // SAFETY: made by `chatOpen`; Java frees it once, under its
            // write lock.
            drop(unsafe { Box::from_raw(handle as *mut ChatHandle) });
        }
        Ok(())
    })
}

/// `long Native.assistantOpen(long model, String stateDir, byte[] key, String optionsJson)`.
#[no_mangle]
pub extern "system" fn Java_org_sotto_Native_assistantOpen<'local>(
    mut env: EnvUnowned<'local>,
    _class: JClass<'local>,
    model_handle: jlong,
    state_dir: JString<'local>,
    key: JByteArray<'local>,
    options: JString<'local>,
) -> jlong {
    run(&mut env, |env| {
        let dir = optional_text(env, &state_dir, "stateDir")?;
        let options = optional_text(env, &options, "optionsJson")?;
        let key =
            match dir {
                None => None,
                Some(_) => {
                    let k = bytes(env, &key, "key")?;
                    let len = k.len();
                    Some(<[u8; 32]>::try_from(k).map_err(|_| {
                        FfiError::invalid(format!("key is {len} bytes; it must be 32"))
                    })?)
                }
            };
        // SAFETY: see `model`.
        let m = unsafe { model(model_handle) }?;
        let handle = AssistantHandle::open(m, dir.as_deref(), key, options.as_deref())?;
        Ok(Box::into_raw(Box::new(handle)) as jlong)
    })
}

/// `String Native.assistantPrekeyBundle(long assistant)`.
#[no_mangle]
pub extern "system" fn Java_org_sotto_Native_assistantPrekeyBundle<'local>(
    mut env: EnvUnowned<'local>,
    _class: JClass<'local>,
    handle: jlong,
) -> JString<'local> {
    run(&mut env, |env| {
        // SAFETY: see `assistant`.
        let json = unsafe { assistant(handle) }?.prekey_bundle()?;
        env.new_string(json).map_err(jni_failure)
    })
}

/// `void Native.assistantHandle(long assistant, String sender, int deviceId,
/// int kind, byte[] body, ReplyListener listener)`.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub extern "system" fn Java_org_sotto_Native_assistantHandle<'local>(
    mut env: EnvUnowned<'local>,
    _class: JClass<'local>,
    handle: jlong,
    sender: JString<'local>,
    device_id: jint,
    kind: jint,
    body: JByteArray<'local>,
    listener: JObject<'local>,
) {
    run(&mut env, |env| {
        // SAFETY: see `assistant`.
        let a = unsafe { assistant(handle) }?;
        let sender = text(env, &sender, "sender")?;
        let envelope = sotto_bridge::Envelope {
            kind: envelope_kind(kind as u32)?,
            body: bytes(env, &body, "body")?,
        };
        let mut stopped = false;
        a.handle(&sender, device_id as u32, envelope, &mut |reply| {
            offer_reply(env, &listener, &mut stopped, reply)
        })
    })
}

/// `int Native.assistantOutbox(long assistant, ReplyListener listener)`.
#[no_mangle]
pub extern "system" fn Java_org_sotto_Native_assistantOutbox<'local>(
    mut env: EnvUnowned<'local>,
    _class: JClass<'local>,
    handle: jlong,
    listener: JObject<'local>,
) -> jint {
    run(&mut env, |env| {
        // SAFETY: see `assistant`.
        let a = unsafe { assistant(handle) }?;
        let mut stopped = false;
        let n = a.outbox(&mut |reply| offer_reply(env, &listener, &mut stopped, reply))?;
        Ok(n as jint)
    })
}

/// `String Native.assistantSafetyNumber(long assistant, String peer, int deviceId)`.
#[no_mangle]
pub extern "system" fn Java_org_sotto_Native_assistantSafetyNumber<'local>(
    mut env: EnvUnowned<'local>,
    _class: JClass<'local>,
    handle: jlong,
    peer: JString<'local>,
    device_id: jint,
) -> JString<'local> {
    run(&mut env, |env| {
        let peer = text(env, &peer, "peer")?;
        // SAFETY: see `assistant`.
        let number = unsafe { assistant(handle) }?.safety_number(&peer, device_id as u32)?;
        env.new_string(number).map_err(jni_failure)
    })
}

/// `void Native.assistantAcceptIdentity(long assistant, String peer, int deviceId)`.
#[no_mangle]
pub extern "system" fn Java_org_sotto_Native_assistantAcceptIdentity<'local>(
    mut env: EnvUnowned<'local>,
    _class: JClass<'local>,
    handle: jlong,
    peer: JString<'local>,
    device_id: jint,
) {
    run(&mut env, |env| {
        let peer = text(env, &peer, "peer")?;
        // SAFETY: see `assistant`.
        unsafe { assistant(handle) }?.accept_identity(&peer, device_id as u32)
    })
}

/// `int Native.assistantRotateSignedPrekey(long assistant)`.
#[no_mangle]
pub extern "system" fn Java_org_sotto_Native_assistantRotateSignedPrekey<'local>(
    mut env: EnvUnowned<'local>,
    _class: JClass<'local>,
    handle: jlong,
) -> jint {
    run(&mut env, |_| {
        // SAFETY: see `assistant`.
        Ok(unsafe { assistant(handle) }?.rotate_signed_prekey()? as jint)
    })
}

/// `void Native.assistantFree(long assistant)`.
#[no_mangle]
pub extern "system" fn Java_org_sotto_Native_assistantFree<'local>(
    mut env: EnvUnowned<'local>,
    _class: JClass<'local>,
    handle: jlong,
) {
    run(&mut env, |_| {
        if handle != 0 {
            // SAFETY: made by `assistantOpen`; Java frees it once, under its
            // write lock.
            drop(unsafe { Box::from_raw(handle as *mut AssistantHandle) });
        }
        Ok(())
    })
}
