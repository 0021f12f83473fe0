//! Constrained decoding: the output must match a JSON Schema or a grammar.
//!
//! The automaton is llguidance's (the one llama.cpp and vLLM use): it
//! compiles the schema or the Lark grammar once per generation and, before
//! each token, gives the set of tokens that keep the output a prefix of a
//! valid one. [`Session::generate`](crate::Session::generate) sets every
//! other token's logit to −∞ before the sampler runs, so greedy, top-k,
//! top-p and min-p all draw from allowed tokens only.
//!
//! Speculative decoding stays on under a constraint: each draft token is
//! accepted only when the sampler picks it from its own masked logits row,
//! computed after the automaton consumed the tokens before it, so a draft
//! token the grammar forbids is never kept.
//!
//! A GBNF grammar (llama.cpp's `root ::= ...` syntax) is translated to Lark
//! when the constraint is built ([`Constraint::gbnf_text`]; see the `gbnf`
//! module for how the translation keeps GBNF's language exactly), so a
//! malformed one is an [`Error::GrammarSyntax`] with its line before any
//! model runs.
//!
//! The automaton is behind the `constrain` feature; [`Constraint`] itself is
//! plain data so options carry it in every build, and a build without the
//! feature refuses it with [`Error::FeatureDisabled`] before any token.

use crate::error::{Error, Result};
use serde_json::Value;

mod gbnf;

/// What the generated text must match.
#[derive(Clone, Debug, PartialEq)]
pub enum Constraint {
    /// A JSON Schema (draft 2020-12 subset llguidance supports). Without an
    /// `x-guidance` key the output is compact JSON (`", "` and `": "`
    /// separators, no other whitespace), which bounds its length by the
    /// schema's.
    JsonSchema(Value),
    /// A grammar in llguidance's Lark syntax (`start: ...`; `%json {...}`
    /// embeds a JSON Schema; `/regex/` terminals).
    Lark(String),
    /// A GBNF grammar (llama.cpp's syntax, start rule `root`) and its Lark
    /// translation, which is what the automaton compiles. Build it with
    /// [`Constraint::gbnf_text`].
    Gbnf {
        /// The grammar as the user wrote it.
        source: String,
        /// Its translation (the same language).
        lark: String,
    },
}

/// Which grammar syntax a text or file is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrammarSyntax {
    /// llguidance's Lark (`start: ...`).
    Lark,
    /// llama.cpp's GBNF (`root ::= ...`).
    Gbnf,
}

impl GrammarSyntax {
    /// The syntax a file name says (`.gbnf` or `.lark`), if it says one.
    pub fn from_extension(path: &std::path::Path) -> Option<Self> {
        match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
            "gbnf" => Some(GrammarSyntax::Gbnf),
            "lark" => Some(GrammarSyntax::Lark),
            _ => None,
        }
    }

    /// The syntax of `text`: GBNF when a line outside comments defines a
    /// rule with `::=`, Lark otherwise.
    pub fn detect(text: &str) -> Self {
        let gbnf_rule = text.lines().any(|l| {
            let l = l.trim_start();
            !l.starts_with('#') && !l.starts_with("//") && l.contains("::=")
        });
        if gbnf_rule {
            GrammarSyntax::Gbnf
        } else {
            GrammarSyntax::Lark
        }
    }
}

impl Constraint {
    /// A JSON Schema from its text; [`Error::InvalidConstraint`] when it is
    /// not JSON. (Whether it is a schema the automaton can compile is
    /// checked when a generation starts.)
    pub fn json_schema_text(text: &str) -> Result<Self> {
        let schema: Value = serde_json::from_str(text).map_err(|e| Error::InvalidConstraint {
            kind: "JSON Schema",
            reason: e.to_string(),
        })?;
        if !(schema.is_object() || schema.is_boolean()) {
            return Err(Error::InvalidConstraint {
                kind: "JSON Schema",
                reason: "a schema is a JSON object or a boolean".into(),
            });
        }
        Ok(Constraint::JsonSchema(schema))
    }

    /// A grammar from its text, in the syntax it is written in
    /// ([`GrammarSyntax::detect`]: GBNF when it defines rules with `::=`,
    /// Lark otherwise).
    pub fn grammar_text(text: &str) -> Result<Self> {
        Self::grammar_text_as(text, GrammarSyntax::detect(text))
    }

    /// A grammar from its text in the given syntax.
    pub fn grammar_text_as(text: &str, syntax: GrammarSyntax) -> Result<Self> {
        if text.trim().is_empty() {
            return Err(Error::InvalidConstraint {
                kind: "grammar",
                reason: "the grammar is empty".into(),
            });
        }
        match syntax {
            GrammarSyntax::Lark => Ok(Constraint::Lark(text.to_string())),
            GrammarSyntax::Gbnf => Self::gbnf_text(text),
        }
    }

    /// A GBNF grammar (llama.cpp's syntax) from its text, translated to
    /// Lark now: [`Error::GrammarSyntax`] with the line and column when it
    /// does not parse, names an undefined rule or has no `root`.
    pub fn gbnf_text(text: &str) -> Result<Self> {
        let lark = gbnf::to_lark(text).map_err(|e| Error::GrammarSyntax {
            line: e.line,
            column: e.column,
            reason: e.reason,
        })?;
        Ok(Constraint::Gbnf {
            source: text.to_string(),
            lark,
        })
    }

    /// Which kind of constraint, for errors and statistics.
    pub fn kind(&self) -> &'static str {
        match self {
            Constraint::JsonSchema(_) => "JSON Schema",
            Constraint::Lark(_) => "grammar",
            Constraint::Gbnf { .. } => "GBNF grammar",
        }
    }

    /// Whether `text` is an output this constraint allows, the beginning
    /// of one, or neither, checked byte by byte by the automaton (no model,
    /// no tokenizer): for validating outputs, and for tests.
    #[cfg(feature = "constrain")]
    pub fn check_text(&self, text: &str) -> Result<TextMatch> {
        automaton::check_text(self, text)
    }
}

/// What [`Constraint::check_text`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TextMatch {
    /// The text is a complete output.
    Complete,
    /// The text is not complete, but some continuation makes it one.
    Prefix,
    /// No continuation makes the text an output.
    Rejected,
}

/// llguidance's JSON options for compact output (`", "` and `": "`, no
/// other whitespace): a small model may otherwise pad JSON with whitespace
/// without end, and a bounded schema then gives a bounded answer.
pub(crate) fn compact_json_options() -> Value {
    serde_json::json!({
        "whitespace_flexible": false,
        "item_separator": ", ",
        "key_separator": ": ",
    })
}

#[cfg(feature = "constrain")]
pub(crate) use automaton::{ConstrainedSampling, GrammarCompiler};

#[cfg(not(feature = "constrain"))]
pub(crate) use disabled::{ConstrainedSampling, GrammarCompiler};

#[cfg(feature = "constrain")]
mod automaton {
    use super::Constraint;
    use crate::error::{Error, Result};
    use llguidance::api::TopLevelGrammar;
    use llguidance::toktrie::{TokRxInfo, TokTrie, TokenId, TokenizerEnv};
    use llguidance::{Matcher, ParserFactory};
    use sotto_models::tokenizer::Tokenizer;
    use std::sync::{Arc, OnceLock};
    use std::time::{Duration, Instant};

    /// The model's vocabulary as llguidance sees it: every token's bytes,
    /// control tokens marked special (so grammar text never matches them),
    /// and the model's own tokenizer for the text llguidance forces.
    struct VocabularyEnv {
        trie: TokTrie,
        tokenizer: Arc<Tokenizer>,
    }

    impl VocabularyEnv {
        fn new(tokenizer: Arc<Tokenizer>) -> Result<Self> {
            let n = tokenizer.vocab_size();
            let mut words = Vec::with_capacity(n);
            for id in 0..n as u32 {
                let bytes = tokenizer.token_bytes(id)?;
                if tokenizer.is_control(id) {
                    let mut marked = vec![TokTrie::SPECIAL_TOKEN_MARKER];
                    marked.extend_from_slice(&bytes);
                    words.push(marked);
                } else {
                    words.push(bytes);
                }
            }
            let ends = tokenizer.end_of_generation_ids();
            let Some(&eos) = ends.first() else {
                return Err(Error::InvalidConstraint {
                    kind: "vocabulary",
                    reason:
                        "the model has no end-of-generation token to finish a constrained answer"
                            .into(),
                });
            };
            let info = TokRxInfo {
                vocab_size: n as u32,
                tok_eos: eos,
                tok_bos: tokenizer.bos_id(),
                tok_pad: tokenizer.padding_id(),
                tok_unk: tokenizer.unknown_id(),
                tok_end_of_turn: tokenizer.eot_id(),
            };
            let trie = TokTrie::from(&info, &words).with_eos_tokens(&ends);
            Ok(Self { trie, tokenizer })
        }
    }

    impl TokenizerEnv for VocabularyEnv {
        fn tok_trie(&self) -> &TokTrie {
            &self.trie
        }

        fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
            // Text the grammar forces is tokenized as the model would; bytes
            // that are not UTF-8 (a cut character) go greedily by the trie.
            match std::str::from_utf8(s) {
                Ok(text) => self
                    .tokenizer
                    .encode(text, false)
                    .unwrap_or_else(|_| self.trie.greedy_tokenize(s)),
                Err(_) => self.trie.greedy_tokenize(s),
            }
        }
    }

    /// Compiles constraints for one tokenizer. Building the token trie and
    /// llguidance's token-class slices takes tens of milliseconds for a
    /// 50k vocabulary, so a session does it once, on its first constraint.
    #[derive(Default)]
    pub(crate) struct GrammarCompiler(OnceLock<Arc<ParserFactory>>);

    impl std::fmt::Debug for GrammarCompiler {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("GrammarCompiler")
                .field("ready", &self.0.get().is_some())
                .finish()
        }
    }

    impl GrammarCompiler {
        fn factory(&self, tokenizer: &Arc<Tokenizer>) -> Result<Arc<ParserFactory>> {
            if let Some(f) = self.0.get() {
                return Ok(f.clone());
            }
            let env = VocabularyEnv::new(tokenizer.clone())?;
            let mut factory =
                ParserFactory::new_simple(&(Arc::new(env) as llguidance::toktrie::TokEnv))
                    .map_err(|e| Error::ConstraintFailed(e.to_string()))?;
            // Warnings go to the caller as errors, never to stderr.
            factory.quiet();
            Ok(self.0.get_or_init(|| Arc::new(factory)).clone())
        }
    }

    /// What llguidance compiles for `constraint`.
    fn top_level(constraint: &Constraint) -> TopLevelGrammar {
        match constraint {
            Constraint::JsonSchema(schema) => {
                let mut schema = schema.clone();
                if let Some(obj) = schema.as_object_mut() {
                    obj.entry("x-guidance")
                        .or_insert_with(super::compact_json_options);
                }
                TopLevelGrammar::from_json_schema(schema)
            }
            Constraint::Lark(text) | Constraint::Gbnf { lark: text, .. } => {
                TopLevelGrammar::from_lark(text.clone())
            }
        }
    }

    /// A matcher for `constraint` over `factory`'s vocabulary.
    fn compile(constraint: &Constraint, factory: &ParserFactory) -> Result<Matcher> {
        let parser =
            factory
                .create_parser(top_level(constraint))
                .map_err(|e| Error::InvalidConstraint {
                    kind: constraint.kind(),
                    reason: e.to_string(),
                })?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(Error::InvalidConstraint {
                kind: constraint.kind(),
                reason: e,
            });
        }
        Ok(matcher)
    }

    /// [`Constraint::check_text`]: the automaton over a vocabulary of
    /// single bytes, fed `text` one byte per token.
    pub(super) fn check_text(constraint: &Constraint, text: &str) -> Result<super::TextMatch> {
        static BYTES: OnceLock<std::result::Result<ParserFactory, String>> = OnceLock::new();
        let factory = BYTES
            .get_or_init(|| {
                let env = llguidance::toktrie::ApproximateTokEnv::single_byte_env();
                let mut f = ParserFactory::new_simple(&env).map_err(|e| e.to_string())?;
                f.quiet();
                Ok(f)
            })
            .as_ref()
            .map_err(|e| Error::ConstraintFailed(e.clone()))?;
        let mut matcher = compile(constraint, factory)?;
        let tokens: Vec<TokenId> = text.bytes().map(TokenId::from).collect();
        let valid = matcher
            .validate_tokens(&tokens)
            .map_err(|e| Error::ConstraintFailed(e.to_string()))?;
        if valid < tokens.len() {
            return Ok(super::TextMatch::Rejected);
        }
        matcher
            .consume_tokens(&tokens)
            .map_err(|e| Error::ConstraintFailed(e.to_string()))?;
        let complete = matcher
            .is_accepting()
            .map_err(|e| Error::ConstraintFailed(e.to_string()))?;
        Ok(if complete {
            super::TextMatch::Complete
        } else {
            super::TextMatch::Prefix
        })
    }

    /// One generation's automaton: masks logits, follows picked tokens, and
    /// counts what masking cost.
    pub(crate) struct ConstrainedSampling {
        matcher: Matcher,
        /// Time the compilation took (the session's first constraint also
        /// builds the token trie).
        pub(crate) compile_time: Duration,
        /// Time spent computing masks and advancing the automaton.
        pub(crate) time: Duration,
        /// Masks computed.
        pub(crate) masks: usize,
    }

    impl ConstrainedSampling {
        /// Compiles `constraint`; [`Error::InvalidConstraint`] when the
        /// schema or grammar is not one the automaton accepts.
        pub(crate) fn new(
            constraint: &Constraint,
            tokenizer: &Arc<Tokenizer>,
            compiler: &GrammarCompiler,
        ) -> Result<Self> {
            let t0 = Instant::now();
            let factory = compiler.factory(tokenizer)?;
            let matcher = compile(constraint, &factory)?;
            Ok(Self {
                matcher,
                compile_time: t0.elapsed(),
                time: Duration::ZERO,
                masks: 0,
            })
        }

        /// Sets the logit of every token the automaton forbids now to −∞
        /// (ids past the tokenizer's vocabulary, padding rows of the output
        /// matrix, are always forbidden).
        pub(crate) fn mask(&mut self, logits: &mut [f32]) -> Result<()> {
            let t0 = Instant::now();
            let mask = self
                .matcher
                .compute_mask()
                .map_err(|e| Error::ConstraintFailed(e.to_string()))?;
            if mask.is_zero() {
                return Err(Error::ConstraintFailed(
                    "no token of the vocabulary continues the output".into(),
                ));
            }
            let known = mask.len().min(logits.len());
            mask.iter_unset_entries(|i| {
                if i < known {
                    logits[i] = f32::NEG_INFINITY;
                }
            });
            for l in &mut logits[known..] {
                *l = f32::NEG_INFINITY;
            }
            self.masks += 1;
            self.time += t0.elapsed();
            Ok(())
        }

        /// Moves the automaton past the picked `token`.
        pub(crate) fn advance(&mut self, token: u32) -> Result<()> {
            let t0 = Instant::now();
            let r = self
                .matcher
                .consume_token(token)
                .map_err(|e| Error::ConstraintFailed(e.to_string()));
            self.time += t0.elapsed();
            r
        }

        /// The output is complete: the grammar allows nothing after it.
        pub(crate) fn is_complete(&self) -> bool {
            self.matcher.is_stopped() && !self.matcher.is_error()
        }
    }
}

#[cfg(not(feature = "constrain"))]
mod disabled {
    use super::Constraint;
    use crate::error::{Error, Result};
    use sotto_models::tokenizer::Tokenizer;
    use std::convert::Infallible;
    use std::sync::Arc;
    use std::time::Duration;

    /// Nothing to cache in a build without the automaton (a field, so the
    /// session builds it with `default()` in both builds).
    #[derive(Debug, Default)]
    pub(crate) struct GrammarCompiler {
        _nothing: (),
    }

    /// Never built: a constraint is refused up front in this build.
    pub(crate) struct ConstrainedSampling {
        never: Infallible,
        pub(crate) compile_time: Duration,
        pub(crate) time: Duration,
        pub(crate) masks: usize,
    }

    impl ConstrainedSampling {
        pub(crate) fn new(_: &Constraint, _: &Arc<Tokenizer>, _: &GrammarCompiler) -> Result<Self> {
            Err(Error::FeatureDisabled {
                backend: "constrained decoding",
                feature: "constrain",
            })
        }
        pub(crate) fn mask(&mut self, _: &mut [f32]) -> Result<()> {
            match self.never {}
        }
        pub(crate) fn advance(&mut self, _: u32) -> Result<()> {
            match self.never {}
        }
        pub(crate) fn is_complete(&self) -> bool {
            match self.never {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_texts_are_typed_errors() {
        assert!(matches!(
            Constraint::json_schema_text("{not json"),
            Err(Error::InvalidConstraint { .. })
        ));
        assert!(matches!(
            Constraint::json_schema_text("[1, 2]"),
            Err(Error::InvalidConstraint { .. })
        ));
        assert!(matches!(
            Constraint::grammar_text("root ::= \"yes\" | \"no\""),
            Ok(Constraint::Gbnf { .. })
        ));
        assert!(matches!(
            Constraint::grammar_text("root ::= \"yes\" |\n  maybe"),
            Err(Error::GrammarSyntax {
                line: 2,
                column: 3,
                ..
            })
        ));
        assert!(matches!(
            Constraint::grammar_text_as("start: \"a\"", GrammarSyntax::Gbnf),
            Err(Error::GrammarSyntax { line: 1, .. })
        ));
        assert!(matches!(
            Constraint::grammar_text("  \n"),
            Err(Error::InvalidConstraint { .. })
        ));
        assert_eq!(
            Constraint::grammar_text("start: \"yes\" | \"no\"").unwrap(),
            Constraint::Lark("start: \"yes\" | \"no\"".into())
        );
    }
}
