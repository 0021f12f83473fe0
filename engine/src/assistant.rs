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
use crate::{Chat, GenerateOptions, GenerationStats, LoadedModel, SamplerConfig};
use sotto_bridge::{Assistant, AssistantError, ConversationId, Role, StorageKey, Turn};
use sotto_models::chat::ChatMessage;
use std::collections::VecDeque;
use std::hash::{Hash, Hasher};
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

/// A warm conversation: its chat (KV cache) and the token count of each
/// history message, keyed by a hash of its text.
struct WarmChat {
    id: ConversationId,
    chat: Chat,
    costs: Vec<(u64, usize)>,
}

/// Template tokens around messages, measured once: a prompt of messages
/// m costs about `fixed + sum(tokens(m) + per_message)`.
#[derive(Clone, Copy, Debug)]
struct TemplateCost {
    fixed: usize,
    per_message: usize,
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
    template_cost: Option<TemplateCost>,
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

fn text_hash(text: &str) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}

/// Where the window of `costs` (token costs of the history messages,
/// `users` the indices of the user messages) starts when the newest user
/// message is answered. Replays the conversation: the start moves only
/// when a turn overflows `budget`, and then to the first user message that
/// brings the window down to `low` (or to that turn's own message).
fn window_start(
    costs: &[usize],
    users: &[usize],
    fixed: usize,
    budget: usize,
    low: usize,
) -> usize {
    let mut prefix = Vec::with_capacity(costs.len() + 1);
    prefix.push(0usize);
    for c in costs {
        prefix.push(prefix[prefix.len() - 1] + c);
    }
    let window = |s: usize, j: usize| fixed + prefix[j + 1] - prefix[s];
    let mut start = 0; // index into `users`
    for (answered, &j) in users.iter().enumerate() {
        if window(users[start], j) > budget {
            while start < answered && window(users[start], j) > low {
                start += 1;
            }
        }
    }
    users.get(start).copied().unwrap_or(0)
}

impl EngineAssistant {
    /// An assistant answering with `model` as `config` says.
    pub fn new(model: Arc<LoadedModel>, config: AssistantConfig) -> Self {
        Self {
            model,
            config,
            template_cost: None,
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
            costs: Vec::new(),
        })
    }

    fn content_tokens(&self, text: &str) -> Result<usize, AssistantError> {
        Ok(self
            .model
            .model()
            .tokenizer
            .encode(text, true)
            .map_err(|e| engine_error(e.into()))?
            .len())
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

    fn template_cost(&mut self, chat: &Chat) -> Result<TemplateCost, AssistantError> {
        if let Some(c) = self.template_cost {
            return Ok(c);
        }
        let one = [Turn::user("a")];
        let three = [Turn::user("a"), Turn::assistant("b"), Turn::user("c")];
        let len = |turns: &[Turn]| -> Result<usize, AssistantError> {
            Ok(chat
                .prompt_tokens(&self.with_system(turns))
                .map_err(engine_error)?
                .len())
        };
        let (one, three) = (len(&one)?, len(&three)?);
        let letter = self.content_tokens("b")?;
        let per_message = (three.saturating_sub(one) / 2).saturating_sub(letter);
        let cost = TemplateCost {
            fixed: one.saturating_sub(letter + per_message),
            per_message,
        };
        self.template_cost = Some(cost);
        Ok(cost)
    }

    /// The messages (system first) the model is given for `history`.
    fn fit_window(
        &mut self,
        warm: &mut WarmChat,
        history: &[Turn],
    ) -> Result<Vec<ChatMessage>, AssistantError> {
        let context = self.config.context;
        let budget = context - self.config.max_tokens.min(context / 2);
        let cost = self.template_cost(&warm.chat)?;
        warm.costs.truncate(history.len());
        let mut costs = Vec::with_capacity(history.len());
        for (i, turn) in history.iter().enumerate() {
            let hash = text_hash(&turn.text);
            let tokens = match warm.costs.get(i) {
                Some(&(h, n)) if h == hash => n,
                _ => {
                    let n = self.content_tokens(&turn.text)?;
                    warm.costs.truncate(i);
                    warm.costs.push((hash, n));
                    n
                }
            };
            costs.push(tokens + cost.per_message);
        }
        let users: Vec<usize> = (0..history.len())
            .filter(|&i| history[i].role == Role::User)
            .collect();
        let low = cost.fixed + budget.saturating_sub(cost.fixed) / 2;
        let mut start = window_start(&costs, &users, cost.fixed, budget, low);
        // The estimate chose the start; the exact prompt has the last word.
        loop {
            let messages = self.with_system(&history[start..]);
            let tokens = warm
                .chat
                .prompt_tokens(&messages)
                .map_err(engine_error)?
                .len();
            if tokens <= budget {
                return Ok(messages);
            }
            match users.iter().find(|&&u| u > start) {
                Some(&next) => start = next,
                None => {
                    let last = history.last().map(|t| t.text.as_str()).unwrap_or("");
                    let own = self.content_tokens(last)?;
                    return Err(AssistantError::MessageTooLong {
                        tokens: own,
                        available: budget.saturating_sub(tokens - own.min(tokens)),
                    });
                }
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_start_moves_rarely_and_far() {
        // 40 exchanges of 10 tokens each way, a fixed cost of 20, a budget
        // of 100 (8 messages) and a low mark of 60 (4 messages).
        let costs = vec![10; 79];
        let users: Vec<usize> = (0..79).step_by(2).collect();
        let mut starts = Vec::new();
        for last in (0..79).step_by(2) {
            let s = window_start(&costs[..=last], &users[..=last / 2], 20, 100, 60);
            assert!(20 + 10 * (last + 1 - s) <= 100, "window fits at {last}");
            assert_eq!(s % 2, 0, "windows start at a user message");
            starts.push(s);
        }
        assert!(starts.windows(2).all(|w| w[0] <= w[1]), "{starts:?}");
        let moves = starts.windows(2).filter(|w| w[0] != w[1]).count();
        // Without stickiness the start would move on every turn past the
        // fourth; moving down to the low mark makes it every other turn.
        assert!(moves <= starts.len() / 2, "{moves} moves: {starts:?}");
        // A function of the history alone: replaying gives the same start.
        assert_eq!(
            window_start(&costs, &users, 20, 100, 60),
            starts[starts.len() - 1]
        );
    }

    #[test]
    fn a_single_oversized_message_starts_at_itself() {
        let costs = vec![10, 10, 500];
        let users = vec![0, 2];
        assert_eq!(window_start(&costs, &users, 20, 100, 60), 2);
    }
}
