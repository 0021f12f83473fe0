//! Chat sessions: a conversation rendered through the model's chat template,
//! generated with prefix reuse, committed only when a turn completes.
//!
//! A turn that fails (context overflow, cancellation, backend error) leaves
//! the message history exactly as it was; the KV cache keeps only a prefix of
//! that history, which is always safe to reuse.

use crate::error::Result;
use crate::generate::{GenerateOptions, GenerationStats, Session};
use crate::tools::Tool;
use sotto_models::chat::{ChatMessage, ChatTemplate};
use std::sync::Arc;

/// A conversation: its messages rendered through the model's chat template
/// on one [`Session`], so each turn reuses the cached prefix.
#[derive(Debug)]
pub struct Chat {
    session: Session,
    template: Arc<ChatTemplate>,
    messages: Vec<ChatMessage>,
    add_bos: bool,
    /// Tools every prompt offers ([`crate::tools`]).
    tools: Vec<Tool>,
}

/// One completed assistant turn.
#[derive(Clone, Debug)]
pub struct Reply {
    /// The answer, stop string excluded.
    pub text: String,
    /// How the generation went.
    pub stats: GenerationStats,
}

impl Chat {
    /// A conversation on `session`, starting with `system` if given.
    pub fn new(session: Session, template: Arc<ChatTemplate>, system: Option<&str>) -> Self {
        let add_bos = session.tokenizer().add_bos();
        let messages = system
            .map(|s| {
                vec![ChatMessage {
                    role: "system".into(),
                    content: s.into(),
                }]
            })
            .unwrap_or_default();
        Self {
            session,
            template,
            messages,
            add_bos,
            tools: Vec::new(),
        }
    }

    /// The history, system message first.
    pub fn messages(&self) -> &[ChatMessage] {
        &self.messages
    }

    /// The session it runs on.
    pub fn session(&self) -> &Session {
        &self.session
    }
    #[cfg(feature = "bridge")]
    pub(crate) fn session_mut(&mut self) -> &mut Session {
        &mut self.session
    }
    /// The chat template it renders through.
    pub fn template(&self) -> &ChatTemplate {
        &self.template
    }

    /// Replaces the history (for example restored from an encrypted store).
    /// The cache keeps whatever prefix still matches.
    pub fn set_messages(&mut self, messages: Vec<ChatMessage>) {
        self.messages = messages;
    }

    /// Offers `tools` in every prompt from now on (none: no tools); see
    /// [`Chat::send_for_tool_call`].
    pub fn set_tools(&mut self, tools: Vec<Tool>) {
        self.tools = tools;
    }

    /// The tools the prompts offer.
    pub fn tools(&self) -> &[Tool] {
        &self.tools
    }

    /// The exact tokens the model sees for `messages` plus the generation prompt.
    pub fn prompt_tokens(&self, messages: &[ChatMessage]) -> Result<Vec<u32>> {
        let text = crate::tools::render_with_tools(&self.template, messages, &self.tools, true)?;
        let tok = self.session.tokenizer();
        let mut ids = Vec::new();
        if self.add_bos {
            if let Some(b) = tok.bos_id() {
                ids.push(b);
            }
        }
        ids.extend(tok.encode(&text, true)?);
        Ok(ids)
    }

    /// Adds a user turn and generates the assistant's answer, streaming it.
    pub fn send(
        &mut self,
        user: &str,
        opts: &GenerateOptions,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<Reply> {
        let mut next = self.messages.clone();
        next.push(ChatMessage {
            role: "user".into(),
            content: user.into(),
        });
        self.answer(&next, opts, on_text)
    }

    /// Generates the assistant's answer for a full history given by the
    /// caller (the bridge keeps histories itself); the last message should be
    /// the user's.
    pub fn answer(
        &mut self,
        history: &[ChatMessage],
        opts: &GenerateOptions,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<Reply> {
        let prompt = self.prompt_tokens(history)?;
        let mut text = String::new();
        let stats = self.session.generate(&prompt, opts, &mut |piece| {
            text.push_str(piece);
            on_text(piece);
        })?;
        self.messages = history.to_vec();
        self.messages.push(ChatMessage {
            role: "assistant".into(),
            content: text.clone(),
        });
        Ok(Reply { text, stats })
    }
}
