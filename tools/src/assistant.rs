//! The real engine behind the bridge's `Assistant` trait: one model loaded
//! once, one chat state (KV cache) per conversation so each turn only
//! prefills what is new, a bounded number of caches kept warm.

use sotto_bridge::{Assistant, AssistantError, ConversationId, Role, Turn};
use sotto_engine::{Chat, GenerateOptions, LoadedModel, SamplerConfig};
use sotto_models::chat::ChatMessage;
use std::collections::VecDeque;

/// How the assistant answers.
#[derive(Clone, Debug)]
pub struct AssistantConfig {
    pub system: Option<String>,
    pub sampler: SamplerConfig,
    pub max_tokens: usize,
    pub context: usize,
    /// Conversations whose KV caches stay in memory; older ones are dropped
    /// and re-prefilled from their (stored) history when they speak again.
    pub warm_conversations: usize,
}

impl Default for AssistantConfig {
    fn default() -> Self {
        Self {
            system: Some("You are a helpful assistant.".into()),
            sampler: SamplerConfig {
                temperature: 0.0,
                ..SamplerConfig::default()
            },
            max_tokens: 256,
            context: 2048,
            warm_conversations: 4,
        }
    }
}

pub struct EngineAssistant {
    /// Opened once through the engine's entry point; each conversation gets
    /// a backend of its own (for the CPU a cheap clone sharing norms, rope
    /// tables and thread pool) with its own KV cache.
    model: LoadedModel,
    config: AssistantConfig,
    /// Most recently used last.
    chats: VecDeque<(ConversationId, Chat)>,
}

impl EngineAssistant {
    pub fn new(model: LoadedModel, config: AssistantConfig) -> Self {
        Self {
            model,
            config,
            chats: VecDeque::new(),
        }
    }

    fn chat_for(&mut self, id: &ConversationId) -> Result<Chat, AssistantError> {
        if let Some(i) = self.chats.iter().position(|(c, _)| c == id) {
            if let Some((_, chat)) = self.chats.remove(i) {
                return Ok(chat);
            }
        }
        self.model
            .chat(self.config.context, None)
            .map_err(engine_error)
    }
}

fn engine_error(e: sotto_engine::Error) -> AssistantError {
    // The engine's errors never carry message text (see sotto_engine::Error).
    AssistantError(e.to_string())
}

impl Assistant for EngineAssistant {
    fn reply(
        &mut self,
        conversation: &ConversationId,
        history: &[Turn],
    ) -> Result<String, AssistantError> {
        let mut messages = Vec::with_capacity(history.len() + 1);
        if let Some(system) = &self.config.system {
            messages.push(ChatMessage {
                role: "system".into(),
                content: system.clone(),
            });
        }
        messages.extend(history.iter().map(|t| {
            ChatMessage {
                role: match t.role {
                    Role::User => "user",
                    Role::Assistant => "assistant",
                }
                .into(),
                content: t.text.clone(),
            }
        }));
        let mut chat = self.chat_for(conversation)?;
        let opts = GenerateOptions {
            sampler: self.config.sampler.clone(),
            max_tokens: self.config.max_tokens,
            ..GenerateOptions::default()
        };
        let result = chat.answer(&messages, &opts, &mut |_| {});
        // Keep the chat warm whatever happened: its cache holds only a prefix
        // of a real history, which is always safe to reuse.
        self.chats.push_back((conversation.clone(), chat));
        while self.chats.len() > self.config.warm_conversations.max(1) {
            self.chats.pop_front();
        }
        result.map(|r| r.text).map_err(engine_error)
    }
}
