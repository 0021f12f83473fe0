//! Chat sessions: a conversation rendered through the model's chat template,
//! generated with prefix reuse, committed only when a turn completes.
//!
//! A turn that fails (context overflow, cancellation, backend error) leaves
//! the message history exactly as it was; the KV cache keeps only a prefix of
//! that history, which is always safe to reuse.
//!
//! A full context follows the session's [`ContextPolicy`]: under `Shift`
//! the whole history keeps being sent, tokenized turn by turn (the text a
//! turn adds is tokenized alone, from the end of the previous exchange),
//! and the session maps it past what its shifts dropped; under
//! `TrimTurns` the oldest whole turns leave the prompt ([`TurnWindow`]).

use crate::context::{ContextPolicy, TurnWindow};
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
    /// Which turns fit, under [`ContextPolicy::TrimTurns`].
    window: TurnWindow,
    /// Under [`ContextPolicy::Shift`]: the rendered text of the history
    /// (no generation prompt) and its tokens, extended turn by turn.
    rendered: Option<(String, Vec<u32>)>,
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
            window: TurnWindow::new(),
            rendered: None,
            tools: Vec::new(),
        }
    }

    /// What a full context does from now on (see [`ContextPolicy`]).
    pub fn set_context_policy(&mut self, policy: ContextPolicy) {
        self.session.set_context_policy(policy);
    }

    /// Tokens every prompt of this chat starts with (BOS, the system
    /// message and the template around it): the `keep` of a
    /// [`ContextPolicy::Shift`] that never drops the system message.
    pub fn pinned_prefix_len(&self) -> Result<usize> {
        let system: Vec<ChatMessage> = self
            .messages
            .first()
            .filter(|m| m.role == "system")
            .cloned()
            .into_iter()
            .collect();
        let with = |content: &str| {
            let mut m = system.clone();
            m.push(ChatMessage {
                role: "user".into(),
                content: content.into(),
            });
            self.prompt_tokens(&m)
        };
        let (a, b) = (with("a")?, with("b")?);
        Ok(a.iter().zip(&b).take_while(|(x, y)| x == y).count())
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
        let text = self.render(messages, true)?;
        self.tokens_after(&[], &text)
    }

    fn render(&self, messages: &[ChatMessage], generation_prompt: bool) -> Result<String> {
        crate::tools::render_with_tools(&self.template, messages, &self.tools, generation_prompt)
    }

    /// The tokens of `text` (a render) after `prefix`, the tokens of an
    /// earlier render it extends (BOS first when the model wants one).
    fn tokens_after(&self, prefix: &[u32], text: &str) -> Result<Vec<u32>> {
        let tok = self.session.tokenizer();
        let mut ids = prefix.to_vec();
        if prefix.is_empty() && self.add_bos {
            if let Some(b) = tok.bos_id() {
                ids.push(b);
            }
        }
        ids.extend(tok.encode(text, true)?);
        Ok(ids)
    }

    /// [`Chat::prompt_tokens`] of a history that extends the last one
    /// rendered: only the new text is tokenized, from the end of the
    /// previous exchange (where a template's end-of-turn marker makes a
    /// boundary the tokenizer never merges across).
    fn extended_prompt_tokens(&self, messages: &[ChatMessage]) -> Result<Vec<u32>> {
        let text = self.render(messages, true)?;
        match &self.rendered {
            Some((before, tokens)) if text.starts_with(before.as_str()) => {
                self.tokens_after(tokens, &text[before.len()..])
            }
            _ => self.tokens_after(&[], &text),
        }
    }

    /// Renders `messages` (a completed history) and keeps its tokens for
    /// [`Chat::extended_prompt_tokens`].
    fn remember_render(&mut self, messages: &[ChatMessage]) -> Result<()> {
        let text = self.render(messages, false)?;
        let tokens = match &self.rendered {
            Some((before, tokens)) if text.starts_with(before.as_str()) => {
                self.tokens_after(tokens, &text[before.len()..])?
            }
            _ => self.tokens_after(&[], &text)?,
        };
        self.rendered = Some((text, tokens));
        Ok(())
    }

    /// The prompt for `history` under the session's policy: the whole
    /// history (incrementally tokenized under `Shift`), or under
    /// `TrimTurns` the system message and the newest turns that leave
    /// `opts.max_tokens` (at most half the context) for the answer.
    fn policy_prompt(
        &mut self,
        history: &[ChatMessage],
        opts: &GenerateOptions,
    ) -> Result<Vec<u32>> {
        match self.session.context_policy() {
            ContextPolicy::Error => self.prompt_tokens(history),
            ContextPolicy::Shift { .. } => self.extended_prompt_tokens(history),
            ContextPolicy::TrimTurns => {
                let context = self.session.context();
                let budget = context - opts.max_tokens.min(context / 2);
                let (system, turns) = match history.split_first() {
                    Some((first, rest)) if first.role == "system" => (Some(first), rest),
                    _ => (None, history),
                };
                let mut window = std::mem::take(&mut self.window);
                let tokenizer = Arc::clone(self.session.tokenizer());
                let start = window.fit(
                    system,
                    turns,
                    budget,
                    &mut |m| Ok(self.prompt_tokens(m)?.len()),
                    &mut |text| Ok(tokenizer.encode(text, true)?.len()),
                );
                self.window = window;
                let start = start?;
                let kept: Vec<ChatMessage> =
                    system.into_iter().chain(&turns[start..]).cloned().collect();
                self.prompt_tokens(&kept)
            }
        }
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
        let prompt = self.policy_prompt(history, opts)?;
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
        if matches!(self.session.context_policy(), ContextPolicy::Shift { .. }) {
            let messages = std::mem::take(&mut self.messages);
            let remembered = self.remember_render(&messages);
            self.messages = messages;
            remembered?;
        }
        Ok(Reply { text, stats })
    }
}
