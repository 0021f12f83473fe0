//! The engine behind the bridge's [`Assistant`](sotto_bridge::Assistant)
//! trait (the `bridge` feature): one model loaded once, one chat state (KV
//! cache) per conversation so each turn prefills only what is new, a
//! bounded number of caches kept warm. The CLI's `sotto bridge serve` and the app
//! bindings share it.
//!
//! Conversations never outgrow the context: the system message and the
//! newest user message are always kept, and the oldest exchanges are
//! dropped when the prompt and the reply's room would not fit. The window
//! start moves in large steps (down to half the budget at a time), so the
//! turns after a move extend the same cached prefix instead of
//! re-prefilling on every turn, and it is a function of the history alone:
//! the same conversation always gets the same answers, whatever else the
//! assistant served in between. A newest message that does not fit by
//! itself is
//! [`AssistantError::MessageTooLong`](sotto_bridge::AssistantError::MessageTooLong)
//! (the bridge sends a short refusal instead).
//!
//! With [`EngineAssistant::with_saved_sessions`], a conversation that
//! leaves the warm set is saved sealed ([`crate::session_file`]) in a
//! directory under the app's key, and restored instead of re-prefilled
//! when it speaks again, also after a restart; [`Assistant::persist`]
//! saves the warm ones before a shutdown. Saved sessions are a cache: the
//! history itself lives in the bridge's store, so a file that is refused
//! (damaged, another model after an upgrade) is removed and the
//! conversation re-prefilled.

use crate::session_file::{session_file_name, SessionFileProblem};
use crate::{Chat, GenerateOptions, GenerationStats, LoadedModel, SamplerConfig, TurnWindow};
use sotto_bridge::{Assistant, AssistantError, ConversationId, Role, StorageKey, Turn};
use sotto_models::chat::ChatMessage;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;

/// How the assistant answers.
#[derive(Clone, Debug)]
pub struct AssistantConfig {
    /// System message put before every conversation.
    pub system: Option<String>,
    /// How replies are sampled.
    pub sampler: SamplerConfig,
    /// Longest reply, in tokens; the prompt leaves room for it (at most
    /// half the context).
    pub max_tokens: usize,
    /// KV cache size per conversation, in tokens; older turns are dropped
    /// from the prompt to fit.
    pub context: usize,
    /// Conversations whose KV caches stay in memory; older ones are dropped
    /// and re-prefilled from their (stored) history when they speak again.
    pub warm_conversations: usize,
}

impl Default for AssistantConfig {
    fn default() -> Self {
        Self {
            system: Some("You are a helpful assistant.".into()),
            sampler: SamplerConfig::greedy(),
            max_tokens: 256,
            context: 2048,
            warm_conversations: 4,
        }
    }
}

/// A warm conversation: its chat (KV cache) and which of its turns fit.
struct WarmChat {
    id: ConversationId,
    chat: Chat,
    window: TurnWindow,
}

/// The bridge's [`Assistant`] on a loaded model: one
/// chat per conversation, the warmest kept in memory. Used by one thread at a
/// time (the bridge serializes calls).
pub struct EngineAssistant {
    /// Opened through the engine's one entry point (any backend); each
    /// conversation gets a backend of its own from it (for the CPU a cheap
    /// clone sharing norms, rope tables and thread pool) with its own KV
    /// cache.
    model: Arc<LoadedModel>,
    config: AssistantConfig,
    /// Most recently used last.
    chats: VecDeque<WarmChat>,
    saved: Option<SavedSessions>,
    last_stats: Option<GenerationStats>,
}

/// Where conversations leaving the warm set are saved, and the key.
struct SavedSessions {
    dir: PathBuf,
    key: StorageKey,
}

impl SavedSessions {
    fn path(&self, id: &ConversationId) -> PathBuf {
        self.dir.join(session_file_name(&self.key, id.0.as_bytes()))
    }

    fn save(&self, warm: &WarmChat) -> crate::Result<()> {
        std::fs::create_dir_all(&self.dir).map_err(|e| crate::Error::SessionFile {
            path: self.dir.clone(),
            problem: SessionFileProblem::CreateDir(e),
        })?;
        warm.chat.save(self.path(&warm.id), &self.key)
    }
}

impl std::fmt::Debug for EngineAssistant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineAssistant")
            .field("config", &self.config)
            .field("warm", &self.chats.len())
            .finish_non_exhaustive()
    }
}

fn engine_error(e: crate::Error) -> AssistantError {
    // The engine's errors never carry message text (see crate::Error).
    AssistantError::Engine(Box::new(e))
}

fn message(role: &str, content: &str) -> ChatMessage {
    ChatMessage {
        role: role.into(),
        content: content.into(),
    }
}

impl EngineAssistant {
    /// An assistant answering with `model` as `config` says.
    pub fn new(model: Arc<LoadedModel>, config: AssistantConfig) -> Self {
        Self {
            model,
            config,
            chats: VecDeque::new(),
            saved: None,
            last_stats: None,
        }
    }

    /// Saves conversations leaving the warm set in `dir` (for example a
    /// folder of the bridge's state directory), sealed under the app's
    /// `key` and named by keyed tags, and resumes them from there.
    pub fn with_saved_sessions(mut self, dir: impl Into<PathBuf>, key: StorageKey) -> Self {
        self.saved = Some(SavedSessions {
            dir: dir.into(),
            key,
        });
        self
    }

    /// How the last reply's generation went (prompt tokens, how many were
    /// reused from the cache, times).
    pub fn last_stats(&self) -> Option<&GenerationStats> {
        self.last_stats.as_ref()
    }

    /// The conversation's saved session, if there is one it accepts.
    fn restore(&self, id: &ConversationId) -> Option<Chat> {
        let saved = self.saved.as_ref()?;
        let path = saved.path(id);
        if !path.exists() {
            return None;
        }
        match self
            .model
            .restore_chat(&path, &saved.key, self.config.context)
        {
            Ok(chat) => Some(chat),
            Err(_) => {
                // A cache only: a refused file is dropped and the
                // conversation prefilled from its history.
                let _ = std::fs::remove_file(&path);
                None
            }
        }
    }

    /// How it answers.
    pub fn config(&self) -> &AssistantConfig {
        &self.config
    }

    fn warm_chat(&mut self, id: &ConversationId) -> Result<WarmChat, AssistantError> {
        if let Some(i) = self.chats.iter().position(|w| &w.id == id) {
            if let Some(warm) = self.chats.remove(i) {
                return Ok(warm);
            }
        }
        let chat = match self.restore(id) {
            Some(chat) => chat,
            None => self
                .model
                .chat(self.config.context, None)
                .map_err(engine_error)?,
        };
        Ok(WarmChat {
            id: id.clone(),
            chat,
            window: TurnWindow::new(),
        })
    }

    fn content_tokens(&self, text: &str) -> crate::Result<usize> {
        Ok(self.model.model().tokenizer.encode(text, true)?.len())
    }

    fn with_system(&self, history: &[Turn]) -> Vec<ChatMessage> {
        let mut messages = Vec::with_capacity(history.len() + 1);
        if let Some(system) = &self.config.system {
            messages.push(message("system", system));
        }
        messages.extend(history.iter().map(|t| {
            message(
                match t.role {
                    Role::User => "user",
                    Role::Assistant => "assistant",
                },
                &t.text,
            )
        }));
        messages
    }

    /// The messages (system first) the model is given for `history`.
    fn fit_window(
        &self,
        warm: &mut WarmChat,
        history: &[Turn],
    ) -> Result<Vec<ChatMessage>, AssistantError> {
        let context = self.config.context;
        let budget = context - self.config.max_tokens.min(context / 2);
        let messages = self.with_system(history);
        let (system, turns) = match &self.config.system {
            Some(_) => (messages.first(), &messages[1..]),
            None => (None, &messages[..]),
        };
        let chat = &warm.chat;
        let start = warm
            .window
            .fit(
                system,
                turns,
                budget,
                &mut |m| Ok(chat.prompt_tokens(m)?.len()),
                &mut |text| self.content_tokens(text),
            )
            .map_err(|e| match e {
                crate::Error::MessageTooLong { tokens, available } => {
                    AssistantError::MessageTooLong { tokens, available }
                }
                e => engine_error(e),
            })?;
        Ok(system.into_iter().chain(&turns[start..]).cloned().collect())
    }
}

impl Assistant for EngineAssistant {
    fn reply(
        &mut self,
        conversation: &ConversationId,
        history: &[Turn],
    ) -> Result<String, AssistantError> {
        let mut warm = self.warm_chat(conversation)?;
        let result = self.fit_window(&mut warm, history).and_then(|messages| {
            let opts = GenerateOptions {
                sampler: self.config.sampler.clone(),
                max_tokens: self.config.max_tokens,
                ..GenerateOptions::default()
            };
            warm.chat
                .answer(&messages, &opts, &mut |_| {})
                .map(|r| {
                    self.last_stats = Some(r.stats);
                    r.text
                })
                .map_err(engine_error)
        });
        // Keep the chat warm whatever happened: its cache holds only a prefix
        // of a real history, which is always safe to reuse.
        self.chats.push_back(warm);
        while self.chats.len() > self.config.warm_conversations.max(1) {
            if let (Some(evicted), Some(saved)) = (self.chats.pop_front(), &self.saved) {
                // A failed save costs a re-prefill later, not this reply; a
                // file left from an earlier save still holds a prefix of
                // the history, which is safe to reuse.
                let _ = saved.save(&evicted);
            }
        }
        result
    }

    fn persist(&mut self) -> Result<(), AssistantError> {
        let Some(saved) = &self.saved else {
            return Ok(());
        };
        for warm in &self.chats {
            saved.save(warm).map_err(engine_error)?;
        }
        Ok(())
    }
}
