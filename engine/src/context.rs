//! Context management: what a conversation does when the KV cache is full.
//!
//! * [`ContextPolicy::Shift`] is llama.cpp's context shift: the first
//!   `keep` cached tokens stay, a block after them is dropped, and the
//!   later entries move down with their keys rotated back by the size of
//!   the block. A rotary embedding composes (`R(p - d) = R(-d) R(p)`), so
//!   nothing is recomputed; the moved entries keep what they had attended
//!   to, as in llama.cpp. The session remembers the dropped tokens
//!   ([`ShiftedOut`]), so a caller that keeps sending the whole
//!   conversation (the chat layer) still reuses the cache: its prompt is
//!   mapped onto the cache past the gap.
//! * [`ContextPolicy::TrimTurns`] is the chat layer's sliding window: the
//!   oldest whole exchanges leave the prompt (the system message stays)
//!   and the rest is prefilled again ([`TurnWindow`], shared with the
//!   bridge's assistant). The window start moves in large steps, so the
//!   turns after a move extend the same cached prefix.
//! * [`ContextPolicy::Error`] keeps the typed
//!   [`Error::ContextOverflow`] and [`StopReason::ContextFull`](crate::StopReason::ContextFull).

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::kv_cache::KvCache;
use sotto_kernels::ops::RopeCache;
use sotto_models::chat::ChatMessage;
use std::hash::{Hash, Hasher};

/// What a session (and the chat on it) does when the context is full.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ContextPolicy {
    /// A prompt that does not fit is [`Error::ContextOverflow`]; an answer
    /// that reaches the end stops with
    /// [`StopReason::ContextFull`](crate::StopReason::ContextFull).
    #[default]
    Error,
    /// Context shift: the first `keep` tokens stay (at most half the
    /// context, so a shift always frees room), half of the rest is dropped
    /// whenever the cache is full, mid-prompt or mid-answer.
    Shift {
        /// Tokens at the start never dropped (BOS, system message: see
        /// [`Chat::pinned_prefix_len`](crate::Chat::pinned_prefix_len)).
        keep: usize,
    },
    /// The chat layer drops the oldest whole turns (the system message
    /// stays) and prefills the rest again; an answer that reaches the end
    /// stops with [`StopReason::ContextFull`](crate::StopReason::ContextFull).
    TrimTurns,
}

impl ContextPolicy {
    /// The `keep` a shift of a `capacity`-token cache uses: at most half
    /// of it.
    pub(crate) fn shift_keep(self, capacity: usize) -> Option<usize> {
        match self {
            ContextPolicy::Shift { keep } => Some(keep.min(capacity / 2)),
            _ => None,
        }
    }
}

impl std::str::FromStr for ContextPolicy {
    type Err = Error;
    /// `error`, `shift` (keeping nothing: set
    /// [`ContextPolicy::Shift::keep`] after parsing) or `trim-turns`.
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "error" => Ok(ContextPolicy::Error),
            "shift" => Ok(ContextPolicy::Shift { keep: 0 }),
            "trim-turns" => Ok(ContextPolicy::TrimTurns),
            other => Err(Error::InvalidDescription(format!(
                "context policy {other:?} (error, shift or trim-turns)"
            ))),
        }
    }
}

/// Tokens a shift drops when `len` are cached and `needed` positions must
/// be freed: llama.cpp's half of those after `keep`, more if needed, never
/// past the end.
pub(crate) fn discard_count(len: usize, keep: usize, needed: usize) -> usize {
    let shiftable = len.saturating_sub(keep);
    (shiftable / 2).max(needed).min(shiftable)
}

/// Drops positions `keep..keep + n` of `cache` and rotates the keys moved
/// down back by `n` positions, layer by layer with the rope that layer
/// used (the backend's inverse frequencies, through sotto-kernels' rope).
/// Checks everything it can before touching the cache; on a failure
/// after that the cache keeps `0..keep` (see [`KvCache::remove`]).
pub(crate) fn shift_cache(
    backend: &dyn Backend,
    cache: &mut KvCache,
    keep: usize,
    n: usize,
) -> Result<()> {
    let spec = backend.spec();
    if cache.n_layer() != spec.n_layer {
        return Err(Error::ContextShiftUnsupported {
            backend: backend.name(),
        });
    }
    if n == 0 {
        return Ok(());
    }
    // One table per distinct set of frequencies, of magnitude 1 (a rope
    // `attn_factor` scales cos and sin: it was applied once already).
    let mut tables: Vec<(Vec<f64>, RopeCache)> = Vec::new();
    let mut layer_table = Vec::with_capacity(spec.n_layer);
    for layer in 0..spec.n_layer {
        let inv = backend.rope_inv_freqs(layer, cache.capacity())?;
        let i = match tables.iter().position(|(f, _)| *f == inv) {
            Some(i) => i,
            None => {
                let table = RopeCache::from_inv_freqs(&inv, n + 1, 1.0)?.inverse();
                tables.push((inv, table));
                tables.len() - 1
            }
        };
        layer_table.push(i);
    }
    let (style, head_dim) = (spec.rope_style, cache.head_dim());
    if tables.iter().any(|(_, t)| t.n_rot() > head_dim) {
        return Err(Error::KvCache(format!(
            "rope of {} dims on heads of {head_dim}",
            spec.n_rot
        )));
    }
    cache.remove(keep, n, &mut |layer, key| {
        let table = &tables[layer_table[layer]].1;
        Ok(table.apply(key, 1, head_dim, n, style)?)
    })
}

/// The tokens a session's shifts dropped from its cache: the cache holds
/// `stream[..keep]` and `stream[keep + dropped.len()..]` of the
/// conversation's token stream, `dropped` is what was between.
#[derive(Clone, Debug, Default)]
pub(crate) struct ShiftedOut {
    keep: usize,
    dropped: Vec<u32>,
}

impl ShiftedOut {
    /// Whether nothing was dropped (the cache holds a prefix of the stream).
    pub(crate) fn is_empty(&self) -> bool {
        self.dropped.is_empty()
    }

    /// The kept prefix's length, when something was dropped.
    pub(crate) fn keep(&self) -> Option<usize> {
        (!self.is_empty()).then_some(self.keep)
    }

    /// Whether a shift keeping `keep` tokens can be recorded: not after
    /// shifts that kept another prefix (two gaps it could not describe).
    pub(crate) fn accepts(&self, keep: usize) -> bool {
        self.dropped.is_empty() || self.keep == keep
    }

    /// Records that `cached[keep..keep + n]` was dropped (after
    /// [`ShiftedOut::accepts`]).
    pub(crate) fn record(&mut self, cached: &[u32], keep: usize, n: usize) {
        self.keep = keep;
        self.dropped.extend_from_slice(&cached[keep..keep + n]);
    }

    /// Tokens dropped so far.
    pub(crate) fn dropped(&self) -> usize {
        self.dropped.len()
    }

    /// Forgets the gap (the cache was cut back to at most `keep` tokens).
    pub(crate) fn clear(&mut self) {
        self.dropped.clear();
    }

    /// `prompt` (a whole token stream) as the tokens to run on the cache
    /// holding `cached`: the cached part of the stream it shares, then the
    /// rest of `prompt`. `None` when it leaves the stream before the end
    /// of the gap: the cache is then usable up to `keep` only.
    pub(crate) fn map_prompt(&self, cached: &[u32], prompt: &[u32]) -> Option<Vec<u32>> {
        let keep = self.keep.min(cached.len());
        let gap = self.dropped.len();
        let stream = cached[..keep]
            .iter()
            .chain(&self.dropped)
            .chain(&cached[keep..]);
        let common = stream.zip(prompt).take_while(|(a, b)| a == b).count();
        if common < keep + gap {
            return None;
        }
        let mut mapped = Vec::with_capacity(prompt.len() - gap);
        mapped.extend_from_slice(&cached[..common - gap]);
        mapped.extend_from_slice(&prompt[common..]);
        Some(mapped)
    }
}

/// Template tokens around messages, measured once: a prompt of messages
/// m costs about `fixed + sum(tokens(m) + per_message)`.
#[derive(Clone, Copy, Debug)]
struct TemplateCost {
    fixed: usize,
    per_message: usize,
}

/// Chooses which whole turns of a conversation fit the context
/// ([`ContextPolicy::TrimTurns`]): the newest user message always, the
/// system message always, the oldest exchanges dropped first. Remembers
/// the token count of each message (keyed by a hash of its text) and the
/// template's cost, so each turn tokenizes only what is new.
#[derive(Debug, Default)]
pub struct TurnWindow {
    template_cost: Option<TemplateCost>,
    costs: Vec<(u64, usize)>,
}

fn text_hash(text: &str) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}

fn message(role: &str, content: &str) -> ChatMessage {
    ChatMessage {
        role: role.into(),
        content: content.into(),
    }
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

impl TurnWindow {
    /// A window that has measured nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The index of `turns` (the conversation without its system message,
    /// the newest user message last) the kept window starts at, such that
    /// `system` plus `turns[start..]` render to at most `budget` tokens.
    /// `prompt_len` gives the exact token count of a rendered message list
    /// (generation prompt included), `content_len` of one message's text.
    /// [`Error::MessageTooLong`] when the newest message does not fit by
    /// itself.
    pub fn fit(
        &mut self,
        system: Option<&ChatMessage>,
        turns: &[ChatMessage],
        budget: usize,
        prompt_len: &mut dyn FnMut(&[ChatMessage]) -> Result<usize>,
        content_len: &mut dyn FnMut(&str) -> Result<usize>,
    ) -> Result<usize> {
        let with_system = |rest: &[ChatMessage]| -> Vec<ChatMessage> {
            system.into_iter().chain(rest).cloned().collect()
        };
        let cost = match self.template_cost {
            Some(c) => c,
            None => {
                let one = [message("user", "a")];
                let three = [
                    message("user", "a"),
                    message("assistant", "b"),
                    message("user", "c"),
                ];
                let (one, three) = (
                    prompt_len(&with_system(&one))?,
                    prompt_len(&with_system(&three))?,
                );
                let letter = content_len("b")?;
                let per_message = (three.saturating_sub(one) / 2).saturating_sub(letter);
                let c = TemplateCost {
                    fixed: one.saturating_sub(letter + per_message),
                    per_message,
                };
                self.template_cost = Some(c);
                c
            }
        };
        self.costs.truncate(turns.len());
        let mut costs = Vec::with_capacity(turns.len());
        for (i, turn) in turns.iter().enumerate() {
            let hash = text_hash(&turn.content);
            let tokens = match self.costs.get(i) {
                Some(&(h, n)) if h == hash => n,
                _ => {
                    let n = content_len(&turn.content)?;
                    self.costs.truncate(i);
                    self.costs.push((hash, n));
                    n
                }
            };
            costs.push(tokens + cost.per_message);
        }
        let users: Vec<usize> = (0..turns.len())
            .filter(|&i| turns[i].role == "user")
            .collect();
        let low = cost.fixed + budget.saturating_sub(cost.fixed) / 2;
        let mut start = window_start(&costs, &users, cost.fixed, budget, low);
        // The estimate chose the start; the exact prompt has the last word.
        loop {
            let tokens = prompt_len(&with_system(&turns[start..]))?;
            if tokens <= budget {
                return Ok(start);
            }
            match users.iter().find(|&&u| u > start) {
                Some(&next) => start = next,
                None => {
                    let last = turns.last().map(|t| t.content.as_str()).unwrap_or("");
                    let own = content_len(last)?;
                    return Err(Error::MessageTooLong {
                        tokens: own,
                        available: budget.saturating_sub(tokens - own.min(tokens)),
                    });
                }
            }
        }
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

    #[test]
    fn discard_is_half_of_the_rest_or_what_is_needed() {
        assert_eq!(discard_count(512, 12, 1), 250);
        assert_eq!(discard_count(512, 12, 300), 300);
        assert_eq!(discard_count(512, 12, 600), 500, "never past the end");
        assert_eq!(discard_count(10, 20, 1), 0, "nothing after keep");
    }

    #[test]
    fn a_prompt_is_mapped_past_the_gap() {
        // stream 1 2 3 4 5 6 7, keep 2, 3 4 dropped: the cache holds 1 2 5 6 7
        let mut out = ShiftedOut::default();
        out.record(&[1, 2, 3, 4, 5, 6, 7], 2, 2);
        let cached = [1, 2, 5, 6, 7];
        assert_eq!(out.keep(), Some(2));
        assert_eq!(
            out.map_prompt(&cached, &[1, 2, 3, 4, 5, 6, 7, 8, 9]),
            Some(vec![1, 2, 5, 6, 7, 8, 9])
        );
        // leaves the stream after the gap: the cache is cut back there
        assert_eq!(
            out.map_prompt(&cached, &[1, 2, 3, 4, 5, 9]),
            Some(vec![1, 2, 5, 9])
        );
        // leaves it inside the gap: not mappable
        assert_eq!(out.map_prompt(&cached, &[1, 2, 3, 9]), None);
        // a second shift with the same keep extends the gap; another keep
        // is refused
        assert!(out.accepts(2));
        out.record(&cached, 2, 1);
        assert_eq!(
            out.map_prompt(&[1, 2, 6, 7], &[1, 2, 3, 4, 5, 6, 7]),
            Some(vec![1, 2, 6, 7])
        );
        assert!(!out.accepts(1));
        assert_eq!(
            "trim-turns".parse::<ContextPolicy>().unwrap(),
            ContextPolicy::TrimTurns
        );
        assert!("shrink".parse::<ContextPolicy>().is_err());
    }
}
