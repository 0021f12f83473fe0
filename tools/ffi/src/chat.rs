//! The safe core both bindings (C and JNI) call: a model opened from a path
//! and options JSON, and chats on it. Handles are shared as `Arc`s, so a
//! chat keeps its model alive after the model handle is freed.

use crate::status::{FfiError, FfiResult, SottoStatus};
use serde::Deserialize;
use sotto_engine::{
    BackendChoice, CancelToken, Chat, CpuOptions, GenerateOptions, LoadedModel, OrtOptions,
    PackedCache, SamplerConfig,
};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, TryLockError};

/// Model options, as JSON (every field optional):
/// `{"backend":"cpu","threads":0,"isa":"neon","graphs":"DIR","ep_chain":"qnn,cpu","npu_only":false,"packed_cache":"DIR"}`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct ModelOptions {
    /// cpu (default), ort, hybrid, candle.
    backend: Option<String>,
    threads: usize,
    isa: Option<String>,
    graphs: Option<PathBuf>,
    ep_chain: Option<String>,
    npu_only: bool,
    /// Where the CPU backend caches the weights its kernels repack (the
    /// app's cache directory; `""` turns caching off); absent: the user
    /// cache of `$SOTTO_CACHE`, `$XDG_CACHE_HOME` or `$HOME`, if any.
    packed_cache: Option<PathBuf>,
    /// Test builds only (feature `panic-probe`).
    panic_probe: bool,
}

impl ModelOptions {
    fn choice(&self) -> FfiResult<BackendChoice> {
        let isa = self
            .isa
            .as_deref()
            .map(sotto_kernels::dispatch::Isa::parse)
            .transpose()
            .map_err(|e| FfiError::invalid(format!("options: isa: {e}")))?;
        let cpu = CpuOptions {
            threads: self.threads,
            isa,
            packed_cache: self.packed_cache.as_ref().map(|d| {
                if d.as_os_str().is_empty() {
                    PackedCache::off()
                } else {
                    PackedCache::in_dir(d, PackedCache::from_env().budget_bytes())
                }
            }),
            ..Default::default()
        };
        let graphs = || -> FfiResult<OrtOptions> {
            let dir = self.graphs.clone().ok_or_else(|| {
                FfiError::invalid("options: backend ort and hybrid need \"graphs\"")
            })?;
            Ok(OrtOptions {
                ep_chain: self.ep_chain.clone().unwrap_or_else(|| "cpu".into()),
                npu_only: self.npu_only,
                threads: self.threads,
                ..OrtOptions::cpu(dir)
            })
        };
        Ok(match self.backend.as_deref().unwrap_or("cpu") {
            "cpu" => BackendChoice::Cpu(cpu),
            "ort" => BackendChoice::Ort(graphs()?),
            "hybrid" => BackendChoice::Hybrid {
                graphs: graphs()?,
                cpu,
            },
            "candle" => BackendChoice::Candle {
                threads: self.threads,
            },
            other => {
                return Err(FfiError::invalid(format!(
                    "options: unknown backend {other:?} (cpu, ort, hybrid, candle)"
                )))
            }
        })
    }
}

/// Chat options, as JSON (every field optional): `{"system":"…",
/// "context":2048,"max_tokens":512,"temperature":0.8,"top_k":40,"top_p":0.95,
/// "min_p":0.05,"repeat_penalty":1.0,"seed":42,"stop":["…"]}`.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct ChatOptions {
    pub(crate) system: Option<String>,
    context: usize,
    pub(crate) max_tokens: usize,
    temperature: f32,
    top_k: usize,
    top_p: f32,
    min_p: f32,
    repeat_penalty: f32,
    seed: u64,
    pub(crate) stop: Vec<String>,
}

impl Default for ChatOptions {
    fn default() -> Self {
        let s = SamplerConfig::default();
        Self {
            system: None,
            context: 2048,
            max_tokens: 512,
            temperature: s.temperature,
            top_k: s.top_k,
            top_p: s.top_p,
            min_p: s.min_p,
            repeat_penalty: s.repeat_penalty,
            seed: s.seed,
            stop: Vec::new(),
        }
    }
}

impl ChatOptions {
    /// The sampler these options describe, checked.
    pub(crate) fn sampler(&self) -> FfiResult<SamplerConfig> {
        let sampler = SamplerConfig {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            seed: self.seed,
            ..SamplerConfig::default()
        };
        sampler.validate()?;
        Ok(sampler)
    }

    /// The context length, at least 1.
    pub(crate) fn context(&self) -> FfiResult<usize> {
        if self.context == 0 {
            return Err(FfiError::invalid("options: context must be at least 1"));
        }
        Ok(self.context)
    }
}

/// Parses `json` (empty or absent: every default).
pub(crate) fn parse<T: Default + serde::de::DeserializeOwned>(json: Option<&str>) -> FfiResult<T> {
    match json.map(str::trim) {
        None | Some("") => Ok(T::default()),
        Some(text) => {
            serde_json::from_str(text).map_err(|e| FfiError::invalid(format!("options: {e}")))
        }
    }
}

/// A loaded model shared by its chats.
#[derive(Debug)]
pub struct ModelHandle {
    loaded: Arc<LoadedModel>,
    #[cfg_attr(not(feature = "panic-probe"), allow(dead_code))]
    panic_probe: bool,
}

impl ModelHandle {
    /// Opens the GGUF at `path` with `options` (JSON, see `ModelOptions` in this module).
    pub fn open(path: &str, options: Option<&str>) -> FfiResult<Arc<ModelHandle>> {
        let options: ModelOptions = parse(options)?;
        if options.panic_probe && !cfg!(feature = "panic-probe") {
            return Err(FfiError::invalid(
                "options: panic_probe needs a test build (feature panic-probe)",
            ));
        }
        let loaded = LoadedModel::open(path, options.choice()?)?;
        Ok(Arc::new(ModelHandle {
            loaded: Arc::new(loaded),
            panic_probe: options.panic_probe,
        }))
    }

    /// The engine's model.
    pub fn loaded(&self) -> &LoadedModel {
        &self.loaded
    }

    /// The engine's model, shared (the bridge assistant keeps one).
    pub fn shared(&self) -> Arc<LoadedModel> {
        self.loaded.clone()
    }

    /// What the backend runs on.
    pub fn describe(&self) -> &str {
        self.loaded.describe()
    }
}

/// One conversation. `send` takes the state lock for the whole answer;
/// `cancel` only touches the token of the answer running now.
#[derive(Debug)]
pub struct ChatHandle {
    state: Mutex<ChatState>,
    /// The cancel token of the `send` in progress, if any.
    running: Mutex<Option<CancelToken>>,
}

#[derive(Debug)]
struct ChatState {
    chat: Chat,
    options: GenerateOptions,
    system: Option<String>,
    /// Kept so the model outlives a freed model handle.
    _model: Arc<ModelHandle>,
}

impl ChatHandle {
    /// A new conversation on `model` with `options` (JSON, see `ChatOptions` in this module).
    pub fn open(model: &Arc<ModelHandle>, options: Option<&str>) -> FfiResult<ChatHandle> {
        let o: ChatOptions = parse(options)?;
        let sampler = o.sampler()?;
        let chat = open_chat(model, o.context()?, o.system.as_deref())?;
        Ok(ChatHandle {
            state: Mutex::new(ChatState {
                chat,
                options: GenerateOptions {
                    sampler,
                    max_tokens: o.max_tokens,
                    stop: o.stop,
                    cancel: None,
                    prompt_lookup: None,
                    constraint: None,
                },
                system: o.system,
                _model: model.clone(),
            }),
            running: Mutex::new(None),
        })
    }

    fn lock(&self) -> FfiResult<std::sync::MutexGuard<'_, ChatState>> {
        self.state.try_lock().map_err(|e| match e {
            TryLockError::WouldBlock => FfiError::new(
                SottoStatus::Busy,
                "another thread is using this chat (one call at a time per chat; cancel may come from any thread)",
            ),
            TryLockError::Poisoned(_) => FfiError::new(
                SottoStatus::Poisoned,
                "this chat was poisoned by an earlier panic: free it and open a new one",
            ),
        })
    }

    /// Sends `message` and streams the answer to `on_piece` in whole UTF-8
    /// pieces; returns the whole answer. On error the history is unchanged.
    pub fn send(&self, message: &str, on_piece: &mut dyn FnMut(&str)) -> FfiResult<String> {
        let mut state = self.lock()?;
        let token = CancelToken::new();
        *self.running.lock().map_err(|_| poisoned())? = Some(token.clone());
        let ChatState { chat, options, .. } = &mut *state;
        let opts = GenerateOptions {
            cancel: Some(token),
            ..options.clone()
        };
        let reply = chat.send(message, &opts, on_piece);
        *self.running.lock().map_err(|_| poisoned())? = None;
        Ok(reply?.text)
    }

    /// Cancels the `send` running now on another thread (it returns
    /// `Cancelled`); does nothing when none is running.
    pub fn cancel(&self) -> FfiResult<()> {
        if let Some(token) = self.running.lock().map_err(|_| poisoned())?.as_ref() {
            token.cancel();
        }
        Ok(())
    }

    /// Forgets the conversation (keeps the system message).
    pub fn reset(&self) -> FfiResult<()> {
        let mut state = self.lock()?;
        let system = state
            .system
            .clone()
            .map(|content| sotto_models::chat::ChatMessage {
                role: "system".into(),
                content,
            });
        state.chat.set_messages(system.into_iter().collect());
        Ok(())
    }
}

fn poisoned() -> FfiError {
    FfiError::new(
        SottoStatus::Poisoned,
        "this chat was poisoned by an earlier panic: free it and open a new one",
    )
}

#[cfg(not(feature = "panic-probe"))]
fn open_chat(model: &ModelHandle, context: usize, system: Option<&str>) -> FfiResult<Chat> {
    Ok(model.loaded.chat(context, system)?)
}

/// With the probe on, the backend panics in its first forward pass, deep
/// inside the engine's generation loop.
#[cfg(feature = "panic-probe")]
fn open_chat(model: &ModelHandle, context: usize, system: Option<&str>) -> FfiResult<Chat> {
    if !model.panic_probe {
        return Ok(model.loaded.chat(context, system)?);
    }
    let loaded = &model.loaded;
    let backend: Box<dyn sotto_engine::Backend> = Box::new(probe::PanickingBackend {
        inner: loaded.backend()?,
    });
    let session =
        sotto_engine::Session::new(backend, Arc::new(loaded.model().tokenizer.clone()), context)?;
    Ok(Chat::new(
        session,
        Arc::new(loaded.model().template.clone()),
        system,
    ))
}

#[cfg(feature = "panic-probe")]
mod probe {
    use sotto_engine::{Backend, KvCache, LogitsFor};
    use sotto_models::spec::DecoderSpec;

    /// A backend that panics when asked to run: the test-only way to prove
    /// a panic inside the engine becomes `SOTTO_STATUS_PANIC`.
    pub(super) struct PanickingBackend {
        pub(super) inner: Box<dyn Backend>,
    }

    impl Backend for PanickingBackend {
        fn name(&self) -> &'static str {
            "panic-probe"
        }
        fn spec(&self) -> &DecoderSpec {
            self.inner.spec()
        }
        fn new_cache(&self, capacity: usize) -> sotto_engine::Result<KvCache> {
            self.inner.new_cache(capacity)
        }
        #[allow(clippy::panic)]
        fn forward(
            &mut self,
            _cache: &mut KvCache,
            _tokens: &[u32],
            _which: LogitsFor,
        ) -> sotto_engine::Result<Vec<f32>> {
            panic!("panic probe: the backend panicked on purpose")
        }
        fn describe(&self) -> String {
            format!("panic probe over {}", self.inner.describe())
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn options_parse_with_defaults_and_refuse_unknown_fields() {
        let m: ModelOptions = parse(None).unwrap();
        assert_eq!(m.choice().unwrap(), BackendChoice::default());
        let m: ModelOptions = parse(Some(
            r#"{"backend":"hybrid","graphs":"/g","ep_chain":"qnn","npu_only":true,"threads":2}"#,
        ))
        .unwrap();
        match m.choice().unwrap() {
            BackendChoice::Hybrid { graphs, cpu } => {
                assert_eq!(graphs.graphs, PathBuf::from("/g"));
                assert_eq!(graphs.ep_chain, "qnn");
                assert!(graphs.npu_only);
                assert_eq!(cpu.threads, 2);
            }
            other => panic!("{other:?}"),
        }
        let bad = parse::<ModelOptions>(Some(r#"{"threds":2}"#)).unwrap_err();
        assert_eq!(bad.status, SottoStatus::InvalidArgument);
        assert!(bad.message.contains("threds"), "{}", bad.message);
        let m: ModelOptions = parse(Some(r#"{"backend":"ort"}"#)).unwrap();
        assert_eq!(m.choice().unwrap_err().status, SottoStatus::InvalidArgument);
        let m: ModelOptions = parse(Some(r#"{"isa":"mmx"}"#)).unwrap();
        assert_eq!(m.choice().unwrap_err().status, SottoStatus::InvalidArgument);
        let c: ChatOptions = parse(Some(r#"{"temperature":0,"system":"s"}"#)).unwrap();
        assert_eq!(c.temperature, 0.0);
        assert_eq!(c.context, 2048);
    }
}
