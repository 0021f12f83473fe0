//! The tokenizer stored in a GGUF file, rebuilt on the `tokenizers` crate so
//! that it reproduces llama.cpp's `llama_tokenize` token for token.
//!
//! * `tokenizer.ggml.model = "gpt2"`: byte-level BPE over the vocabulary and
//!   `merges`, after the pre-tokenizer regexes llama.cpp associates with
//!   `tokenizer.ggml.pre` (applied in sequence, each splitting the pieces of
//!   the previous one, matches and gaps both kept).
//! * `tokenizer.ggml.model = "llama"`: SentencePiece BPE. GGUF stores only
//!   token scores, so merges are rebuilt from them (a pair merges when the
//!   concatenation is a token; higher score merges first), spaces become
//!   `▁`, a `▁` is prepended to each text run when `add_space_prefix`, and
//!   unknown characters fall back to `<0xNN>` byte tokens.
//!
//! Control, user-defined and unknown tokens are matched in the raw text
//! before any of that (llama.cpp's `tokenizer_st_partition`); with
//! `parse_special = false` only user-defined ones are.

use std::collections::HashSet;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;

use tokenizers::models::bpe::{Merges, BPE};
use tokenizers::normalizers::{Prepend, Replace, Sequence as NormalizerSequence};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizerSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, NormalizerWrapper, PreTokenizerWrapper, SplitDelimiterBehavior};

use crate::error::{Error, Result};
use crate::gguf::{GgufFile, StrArray};

/// llama.cpp's token types (`tokenizer.ggml.token_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenType {
    /// Id 0, or any id llama.cpp does not define; decoded like `Normal`.
    Undefined,
    /// An ordinary vocabulary piece, produced by the BPE merges (id 1).
    Normal,
    /// The unknown-token placeholder (id 2); matched verbatim in input text.
    Unknown,
    /// A control token such as BOS, EOS or a chat-turn marker (id 3);
    /// matched verbatim in input text, dropped by `decode(.., true)`.
    Control,
    /// A token added by the model's authors (id 4); matched verbatim in
    /// input text.
    UserDefined,
    /// A reserved slot the model never produces (id 5).
    Unused,
    /// A SentencePiece byte-fallback token `<0xNN>` standing for one raw
    /// byte (id 6).
    Byte,
}

impl TokenType {
    fn from_id(id: i64) -> TokenType {
        match id {
            1 => TokenType::Normal,
            2 => TokenType::Unknown,
            3 => TokenType::Control,
            4 => TokenType::UserDefined,
            5 => TokenType::Unused,
            6 => TokenType::Byte,
            _ => TokenType::Undefined,
        }
    }

    /// Matched verbatim in the input before pre-tokenization.
    fn is_special_text(self) -> bool {
        matches!(
            self,
            TokenType::Control | TokenType::UserDefined | TokenType::Unknown
        )
    }
}

/// Vocabulary family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VocabKind {
    /// GPT-2 style byte-level BPE (`"gpt2"`).
    ByteLevelBpe,
    /// SentencePiece BPE with byte fallback (`"llama"`).
    SentencePiece,
}

/// Token texts llama.cpp recognises when the file does not name the token
/// (`llama_vocab::impl::load`, "auto-detect special tokens by text"): a
/// match becomes a control token.
const EOT_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "_<EOT>",
    "<｜end▁of▁sentence｜>",
    "<end_of_utterance>",
];
const EOM_TEXTS: &[&str] = &["<|eom_id|>"];
const FIM_PRE_TEXTS: &[&str] = &[
    "<|fim_prefix|>",
    "<fim-prefix>",
    "<fim_prefix>",
    "<｜fim▁begin｜>",
    "<PRE>",
    "▁<PRE>",
    "<|code_prefix|>",
];
const FIM_SUF_TEXTS: &[&str] = &[
    "<|fim_suffix|>",
    "<fim-suffix>",
    "<fim_suffix>",
    "<｜fim▁hole｜>",
    "<SUF>",
    "▁<SUF>",
    "<|code_suffix|>",
];
const FIM_MID_TEXTS: &[&str] = &[
    "<|fim_middle|>",
    "<fim-middle>",
    "<fim_middle>",
    "<｜fim▁end｜>",
    "<MID>",
    "▁<MID>",
    "<|code_middle|>",
];
const FIM_PAD_TEXTS: &[&str] = &["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>"];
const FIM_REP_TEXTS: &[&str] = &[
    "<|fim_repo|>",
    "<|repo_name|>",
    "<fim-repo>",
    "<REPO>",
    "<reponame>",
];
const FIM_SEP_TEXTS: &[&str] = &["<|file_sep|>"];
/// Texts that end generation whatever their type (llama.cpp's EOG list, as
/// of llama-cpp-python 0.3.36's llama.cpp).
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<｜end▁of▁sentence｜>",
    "[e~[",
];
/// gpt-oss formatting tokens llama.cpp always renders.
const ALWAYS_RENDERED: &[&str] = &["<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"];

/// A GGUF tokenizer.
#[derive(Clone)]
pub struct Tokenizer {
    kind: VocabKind,
    pre: String,
    /// The encoding pipeline, which may still be building on a thread of
    /// its own (see [`Tokenizer::wait_ready`]); shared by clones.
    pipeline: Arc<Pipeline>,
    /// Encodes control tokens' text as ordinary text (`parse_special =
    /// false`): a copy of the pipeline made on first use, since a chat
    /// never asks for it and the copy is every vocabulary map again (a
    /// tenth of a one-shot run's time, and its memory).
    without_special: std::sync::OnceLock<tokenizers::Tokenizer>,
    /// The vocabulary's texts, compactly (one buffer, not a string each).
    tokens: StrArray,
    types: Vec<TokenType>,
    ids: TokenIndex,
    bos: Option<u32>,
    eos: Option<u32>,
    eot: Option<u32>,
    eom: Option<u32>,
    unk: Option<u32>,
    pad: Option<u32>,
    add_bos: bool,
    add_eos: bool,
    add_space_prefix: bool,
    eog: HashSet<u32>,
}

/// The `tokenizers` model and pre-tokenization, with the special tokens
/// added: what `encode` runs.
struct Built {
    /// Splits control tokens out of the text (`parse_special = true`).
    with_special: tokenizers::Tokenizer,
    /// Byte tokens standing for the SentencePiece merge-only characters
    /// whose ids follow the vocabulary (see `sentencepiece_bpe`).
    virtual_bytes: Vec<Vec<u32>>,
}

/// What the pipeline's thread returns: the model without the special
/// tokens (they need the types `Specials::find` settles meanwhile), and
/// SentencePiece's merge-only characters.
type Base = (tokenizers::Tokenizer, Vec<String>);

/// The encoding pipeline: built on a thread of its own (most of a load's
/// time), finished by the first caller that needs it.
struct Pipeline {
    /// The finished pipeline, or why it could not be built (the first
    /// caller gets the typed error, later ones its text).
    done: OnceLock<std::result::Result<Built, String>>,
    /// The building thread, until joined.
    worker: Mutex<Option<JoinHandle<Result<Base>>>>,
    /// Given by a `tokenizer.json`, which lists its own added tokens.
    from_file: bool,
}

impl std::fmt::Debug for Tokenizer {
    // The vocabulary is tens of thousands of strings: summarise it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("kind", &self.kind)
            .field("pre", &self.pre)
            .field("vocab_size", &self.tokens.len())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("eot", &self.eot)
            .field("add_bos", &self.add_bos)
            .field("end_of_generation", &self.end_of_generation_ids())
            .finish_non_exhaustive()
    }
}

fn tok_err(e: impl std::fmt::Display) -> Error {
    Error::Tokenizer(e.to_string())
}

impl Tokenizer {
    /// Builds the tokenizer described by `gguf`'s `tokenizer.ggml.*` keys.
    pub fn from_gguf(gguf: &GgufFile) -> Result<Tokenizer> {
        let tk = Self::build(gguf, None)?;
        tk.wait_ready()?;
        Ok(tk)
    }

    /// [`Tokenizer::from_gguf`], returning as soon as the vocabulary tables
    /// and special tokens are read, while the encoding pipeline (the
    /// `tokenizers` BPE model, most of the time) is still building on a
    /// thread of its own: a loader does its other work meanwhile, then
    /// calls [`Tokenizer::wait_ready`], which reports a pipeline that
    /// could not be built. Encoding waits for it too.
    pub fn from_gguf_in_background(gguf: &GgufFile) -> Result<Tokenizer> {
        Self::build(gguf, None)
    }

    /// Waits for the encoding pipeline; its error, if it could not be built.
    pub fn wait_ready(&self) -> Result<()> {
        self.built().map(|_| ())
    }

    /// The tokenizer of a Hugging Face folder: its vocabulary tables and
    /// special tokens from `gguf` (the folder's view, whose
    /// `tokenizer.ggml.*` keys were read from the same `tokenizer.json`),
    /// and its encoding pipeline exactly as `tokenizer.json` defines it
    /// (normalizer, pre-tokenizer, model, added tokens), loaded by the
    /// `tokenizers` crate rather than rebuilt from the tables: a folder
    /// encodes as `transformers` encodes it.
    pub fn from_hf_pipeline(gguf: &GgufFile, pipeline: tokenizers::Tokenizer) -> Result<Tokenizer> {
        let tk = Self::build(gguf, Some(pipeline))?;
        tk.wait_ready()?;
        Ok(tk)
    }

    fn build(gguf: &GgufFile, pipeline: Option<tokenizers::Tokenizer>) -> Result<Tokenizer> {
        let model = gguf.require_str("tokenizer.ggml.model")?;
        let kind = match model {
            "gpt2" => VocabKind::ByteLevelBpe,
            "llama" => VocabKind::SentencePiece,
            other => {
                return Err(Error::Tokenizer(format!(
                    "unsupported tokenizer.ggml.model {other:?} (supported: gpt2, llama)"
                )))
            }
        };
        let tokens: StrArray = gguf
            .try_get_strings("tokenizer.ggml.tokens")?
            .ok_or_else(|| Error::MissingKey {
                key: "tokenizer.ggml.tokens".into(),
            })?
            .into_owned();
        let n = tokens.len();
        if n == 0 || n > u32::MAX as usize {
            return Err(Error::Tokenizer(format!("vocabulary of {n} tokens")));
        }
        let types: Vec<TokenType> = match gguf.try_get_int_array("tokenizer.ggml.token_type")? {
            Some(t) if t.len() == n => t.into_iter().map(TokenType::from_id).collect(),
            Some(t) => {
                return Err(Error::Tokenizer(format!(
                    "token_type has {} entries for {n} tokens",
                    t.len()
                )))
            }
            None => vec![TokenType::Normal; n],
        };
        let id_key = |keys: &[&str]| id_key(gguf, n, keys);
        let bos = id_key(&["bos_token_id"])?;
        let eos = id_key(&["eos_token_id"])?;
        let unk = id_key(&["unknown_token_id"])?;
        let pad = id_key(&["padding_token_id"])?;
        let add_bos = gguf
            .try_get_bool("tokenizer.ggml.add_bos_token")?
            .unwrap_or(kind == VocabKind::SentencePiece);
        let add_eos = gguf
            .try_get_bool("tokenizer.ggml.add_eos_token")?
            .unwrap_or(false);
        let add_space_prefix = gguf
            .try_get_bool("tokenizer.ggml.add_space_prefix")?
            .unwrap_or(kind == VocabKind::SentencePiece);
        let pre = gguf
            .try_get_str("tokenizer.ggml.pre")?
            .unwrap_or("default")
            .to_string();

        // The encoding pipeline is built on a thread of its own (from its
        // own copy of the vocabulary, a few hundred kilobytes): the BPE
        // model, the longest step of a load. Everything else it needs is
        // made here meanwhile (the merges split, the pre-tokenizer's
        // regexes compiled), then the special tokens are read, and the
        // caller goes on.
        let from_file = pipeline.is_some();
        let mut to_send = None;
        let (worker, built_here) = match pipeline {
            Some(given) => (None, Some(Ok((given, Vec::new())))),
            None => {
                let inputs = match kind {
                    VocabKind::ByteLevelBpe => {
                        let (regexes, ignore_merges) = pre_tokenizer_regexes(&pre)?;
                        let (merges_tx, merges) = std::sync::mpsc::channel();
                        let (pre_tx, pre_tokenizer) = std::sync::mpsc::channel();
                        to_send = Some((merges_tx, regexes, pre_tx));
                        PipelineInputs::ByteLevel {
                            tokens: tokens.clone(),
                            merges,
                            ignore_merges,
                            pre_tokenizer,
                        }
                    }
                    VocabKind::SentencePiece => {
                        PipelineInputs::sentencepiece(gguf, &tokens, unk, add_space_prefix)?
                    }
                };
                // taken by whichever thread builds (the spawn may fail)
                let inputs = Arc::new(Mutex::new(Some(inputs)));
                let mine = Arc::clone(&inputs);
                let spawned = std::thread::Builder::new()
                    .name("sotto-tokenizer".into())
                    .spawn(move || PipelineInputs::build_taken(&mine));
                match spawned {
                    Ok(handle) => (Some(handle), None),
                    // No second thread to be had: here, once the merges are sent.
                    Err(_) => (None, Some(Err(inputs))),
                }
            }
        };
        if let Some((merges_tx, regexes, pre_tx)) = to_send {
            // A send fails only when the builder is gone, which reports why.
            let _ = merges_tx.send(split_merges(gguf)?);
            let _ = pre_tx.send(byte_level_pre_tokenizer(regexes)?);
        }
        let built_here = built_here.map(|b| match b {
            Ok(base) => Ok(base),
            Err(inputs) => PipelineInputs::build_taken(&inputs),
        });
        let Specials {
            ids,
            types,
            eot,
            eom,
            eog,
        } = Specials::find(gguf, &tokens, types, n, eos)?;
        let tk = Tokenizer {
            kind,
            pre,
            pipeline: Arc::new(Pipeline {
                done: OnceLock::new(),
                worker: Mutex::new(worker),
                from_file,
            }),
            without_special: OnceLock::new(),
            tokens,
            types,
            ids,
            bos,
            eos,
            eot,
            eom,
            unk,
            pad,
            add_bos,
            add_eos,
            add_space_prefix,
            eog,
        };
        if let Some(base) = built_here {
            tk.finish(base)?;
        }
        Ok(tk)
    }

    /// The finished pipeline: the building thread joined (once, by the
    /// first caller) and the special tokens added.
    fn built(&self) -> Result<&Built> {
        let p = &self.pipeline;
        if p.done.get().is_none() {
            let handle = p
                .worker
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take();
            if let Some(handle) = handle {
                let base = handle.join().unwrap_or_else(|_| {
                    Err(Error::Tokenizer(
                        "building the encoding pipeline panicked".into(),
                    ))
                });
                self.finish(base)?;
            }
        }
        match p.done.get() {
            Some(done) => done.as_ref().map_err(|e| Error::Tokenizer(e.clone())),
            // another caller holds the thread: wait for its result
            None => Ok(p
                .done
                .wait()
                .as_ref()
                .map_err(|e| Error::Tokenizer(e.clone()))?),
        }
    }

    /// Adds the special tokens to `base` and records the result; the typed
    /// error when it failed (later callers get its text).
    fn finish(&self, base: Result<Base>) -> Result<()> {
        let done = base.and_then(|(mut base, virtual_chars)| {
            let virtual_bytes = virtual_chars
                .iter()
                .map(|c| {
                    c.bytes()
                        .filter_map(|b| self.token_id(&format!("<0x{b:02X}>")).or(self.unk))
                        .collect()
                })
                .collect();
            // A tokenizer.json lists its own added tokens; the control tokens
            // llama.cpp's rules find (ends of generation such as `</s>` beside
            // Gemma's own, FIM markers) become special there too, so a folder
            // and the GGUF made from it split text the same way.
            let specials = self.tokens.iter().zip(&self.types);
            if self.pipeline.from_file {
                let control: Vec<AddedToken> = specials
                    .filter(|(text, ty)| **ty == TokenType::Control && !text.is_empty())
                    .map(|(text, _)| AddedToken::from(text, true).normalized(false))
                    .collect();
                base.add_special_tokens(control).map_err(tok_err)?;
            } else {
                let added: Vec<AddedToken> = specials
                    .filter(|(text, ty)| ty.is_special_text() && !text.is_empty())
                    .map(|(text, ty)| {
                        AddedToken::from(text, *ty != TokenType::UserDefined).normalized(false)
                    })
                    .collect();
                base.add_tokens(added).map_err(tok_err)?;
            }
            Ok(Built {
                with_special: base,
                virtual_bytes,
            })
        });
        let (stored, result) = match done {
            Ok(built) => (Ok(built), Ok(())),
            Err(e) => (Err(e.to_string()), Err(e)),
        };
        let _ = self.pipeline.done.set(stored);
        result
    }

    /// Token ids of `text`, without BOS/EOS; `parse_special` lets control
    /// tokens written in the text (`<|im_start|>`) become their ids. Mirrors
    /// `llama_tokenize(add_special = false, parse_special)`.
    pub fn encode(&self, text: &str, parse_special: bool) -> Result<Vec<u32>> {
        if text.is_empty() {
            return Ok(Vec::new());
        }
        let built = self.built()?;
        let tk = if parse_special {
            &built.with_special
        } else {
            self.without_special.get_or_init(|| {
                let mut t = built.with_special.clone();
                t.set_encode_special_tokens(true);
                t
            })
        };
        let enc = tk.encode(text, false).map_err(tok_err)?;
        let n = self.tokens.len();
        let mut ids = Vec::with_capacity(enc.get_ids().len());
        for &id in enc.get_ids() {
            match (id as usize).checked_sub(n) {
                None => ids.push(id),
                Some(v) => ids.extend(built.virtual_bytes.get(v).into_iter().flatten()),
            }
        }
        Ok(ids)
    }

    /// Like [`encode`](Self::encode), with BOS prepended when the model asks
    /// for it and EOS appended when it asks for that.
    pub fn encode_with_special(&self, text: &str, parse_special: bool) -> Result<Vec<u32>> {
        let mut out = Vec::new();
        if self.add_bos {
            out.extend(self.bos);
        }
        out.extend(self.encode(text, parse_special)?);
        if self.add_eos {
            out.extend(self.eos);
        }
        Ok(out)
    }

    /// Whether a prompt should start with BOS (`tokenizer.ggml.add_bos_token`).
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }
    /// Whether a prompt should end with EOS (`tokenizer.ggml.add_eos_token`).
    pub fn add_eos(&self) -> bool {
        self.add_eos
    }
    /// The beginning-of-sequence token (`tokenizer.ggml.bos_token_id`).
    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }
    /// The end-of-sequence token (`tokenizer.ggml.eos_token_id`).
    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }
    /// The end-of-turn token (`tokenizer.ggml.eot_token_id`), if the file names one.
    pub fn eot_id(&self) -> Option<u32> {
        self.eot
    }
    /// The end-of-message token (`tokenizer.ggml.eom_token_id`), if the file names one.
    pub fn eom_id(&self) -> Option<u32> {
        self.eom
    }
    /// The token for unknown input (`tokenizer.ggml.unknown_token_id`).
    pub fn unknown_id(&self) -> Option<u32> {
        self.unk
    }
    /// The padding token (`tokenizer.ggml.padding_token_id`).
    pub fn padding_id(&self) -> Option<u32> {
        self.pad
    }
    /// The vocabulary family.
    pub fn kind(&self) -> VocabKind {
        self.kind
    }
    /// `tokenizer.ggml.pre` (`"default"` when absent).
    pub fn pre_tokenizer(&self) -> &str {
        &self.pre
    }

    /// Generation stops at this token (EOS, EOT, EOM, and control tokens
    /// such as `<|im_end|>` or `<end_of_turn>`, as llama.cpp decides).
    pub fn is_end_of_generation(&self, id: u32) -> bool {
        self.eog.contains(&id)
    }

    /// All end-of-generation ids, sorted.
    pub fn end_of_generation_ids(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self.eog.iter().copied().collect();
        v.sort_unstable();
        v
    }

    /// Number of tokens in the vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    /// The stored text of a token (byte-level or `▁` form, as in the file).
    pub fn token_text(&self, id: u32) -> Result<&str> {
        self.tokens.get(id as usize).ok_or(self.out_of_range(id))
    }

    /// The token type of `id`.
    pub fn token_type(&self, id: u32) -> Result<TokenType> {
        self.types
            .get(id as usize)
            .copied()
            .ok_or(self.out_of_range(id))
    }

    /// The id of the token whose stored text is `text`.
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.ids.get(&self.tokens, text)
    }

    /// Whether `id` is a control token (skipped by `decode(.., true)`).
    pub fn is_control(&self, id: u32) -> bool {
        matches!(self.types.get(id as usize), Some(TokenType::Control))
    }

    fn out_of_range(&self, id: u32) -> Error {
        Error::TokenOutOfRange {
            id,
            vocab_size: self.tokens.len(),
        }
    }

    /// The bytes token `id` stands for: byte-level pieces mapped back to
    /// bytes, `<0xNN>` byte-fallback tokens to their byte, `▁` to a space,
    /// special tokens to their text. One token may be part of a UTF-8
    /// character; callers assemble the stream.
    pub fn token_bytes(&self, id: u32) -> Result<Vec<u8>> {
        let text = self.token_text(id)?;
        let ty = self.types[id as usize];
        if ty.is_special_text() {
            return Ok(text.as_bytes().to_vec());
        }
        match self.kind {
            VocabKind::ByteLevelBpe => Ok(text
                .chars()
                .map(|c| byte_level_char_to_byte(c).unwrap_or(b'?'))
                .collect()),
            VocabKind::SentencePiece => {
                if ty == TokenType::Byte {
                    if let Some(b) = parse_byte_token(text) {
                        return Ok(vec![b]);
                    }
                }
                Ok(text.replace('\u{2581}', " ").into_bytes())
            }
        }
    }

    /// The text of `ids`; `skip_special` drops control tokens. Invalid UTF-8
    /// (a sequence cut inside a character) becomes U+FFFD.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        let mut bytes = Vec::new();
        for &id in ids {
            if skip_special && self.is_control(id) {
                continue;
            }
            bytes.extend(self.token_bytes(id)?);
        }
        let mut text = String::from_utf8_lossy(&bytes).into_owned();
        // SentencePiece's prefix space is an artifact of encoding.
        if self.kind == VocabKind::SentencePiece && self.add_space_prefix && text.starts_with(' ') {
            text.remove(0);
        }
        Ok(text)
    }
}

/// The pre-tokenizer regexes llama.cpp uses for `tokenizer.ggml.pre`
/// (`llm_tokenizer_bpe` constructor in `src/llama-vocab.cpp`).
fn pre_tokenizer_regexes(pre: &str) -> Result<(&'static [&'static str], bool)> {
    const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
    const LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    const QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    // (regexes, ignore_merges): llama.cpp sets ignore_merges for llama3 only.
    Ok(match pre {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "dbrx" | "smaug-bpe" => {
            (&[LLAMA3], true)
        }
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva-7b" => {
            (&[r"\p{N}", GPT2], false)
        }
        "gpt-2" | "phi-2" | "mpt" | "olmo" | "jais" | "trillion" | "granite-docling" => {
            (&[GPT2], false)
        }
        "qwen2" | "stablelm2" | "hunyuan" | "deepseek-r1-qwen" | "megrez" => (&[QWEN2], false),
        "default" => (
            &[
                r"[\p{P}\$\+<=>\^~\|]+",
                GPT2,
                r"\p{N}+",
                r"[0-9][0-9][0-9]",
            ],
            false,
        ),
        other => {
            return Err(Error::Tokenizer(format!(
                "unsupported pre-tokenizer {other:?} (supported: default, gpt-2, smollm, llama-bpe, qwen2 and their aliases)"
            )))
        }
    })
}

/// The token ids a tokenizer finds by text: every token's id, and the ends
/// of generation and control tokens the file does not name, with the types
/// they give those tokens (llama.cpp's rules at load).
struct Specials {
    ids: TokenIndex,
    types: Vec<TokenType>,
    eot: Option<u32>,
    eom: Option<u32>,
    eog: HashSet<u32>,
}

/// Token text to id over the vocabulary's own texts, which it does not
/// copy: the table holds ids, a lookup compares texts in the vocabulary.
/// Later duplicates win, as in llama.cpp's `token_to_id`. Hashed with
/// foldhash: the 1.7 million lookups of split halves `sentencepiece_merges`
/// makes in Gemma 3's vocabulary take half the time they take with SipHash.
#[derive(Clone)]
struct TokenIndex {
    table: hashbrown::HashTable<u32>,
    hasher: hashbrown::DefaultHashBuilder,
}

impl TokenIndex {
    fn new(tokens: &StrArray) -> TokenIndex {
        let hasher = hashbrown::DefaultHashBuilder::default();
        let mut table = hashbrown::HashTable::with_capacity(tokens.len());
        let text = |id: u32| tokens.get(id as usize).unwrap_or_default();
        for (i, t) in tokens.iter().enumerate() {
            let hash = hasher.hash_one(t);
            match table.find_mut(hash, |&id| text(id) == t) {
                Some(id) => *id = i as u32,
                None => {
                    table.insert_unique(hash, i as u32, |&id| hasher.hash_one(text(id)));
                }
            }
        }
        TokenIndex { table, hasher }
    }

    /// The id of `text` in `tokens`, the vocabulary it was made from.
    fn get(&self, tokens: &StrArray, text: &str) -> Option<u32> {
        let hash = self.hasher.hash_one(text);
        self.table
            .find(hash, |&id| tokens.get(id as usize) == Some(text))
            .copied()
    }
}

impl Specials {
    fn find(
        gguf: &GgufFile,
        tokens: &StrArray,
        mut types: Vec<TokenType>,
        n: usize,
        eos: Option<u32>,
    ) -> Result<Specials> {
        let ids = TokenIndex::new(tokens);
        let ids_get = |t: &str| ids.get(tokens, t);
        let id_key = |keys: &[&str]| id_key(gguf, n, keys);
        // Special tokens the file does not name are found by their text, and
        // become control tokens, exactly as llama.cpp does at load.
        let mut by_text = |explicit: Option<u32>, texts: &[&str]| -> Option<u32> {
            explicit.or_else(|| {
                let id = texts.iter().filter_map(|t| ids_get(t)).min()?;
                types[id as usize] = TokenType::Control;
                Some(id)
            })
        };
        let eot = by_text(id_key(&["eot_token_id"])?, EOT_TEXTS);
        let eom = by_text(id_key(&["eom_token_id"])?, EOM_TEXTS);
        by_text(
            id_key(&["fim_pre_token_id", "prefix_token_id"])?,
            FIM_PRE_TEXTS,
        );
        by_text(
            id_key(&["fim_suf_token_id", "suffix_token_id"])?,
            FIM_SUF_TEXTS,
        );
        by_text(
            id_key(&["fim_mid_token_id", "middle_token_id"])?,
            FIM_MID_TEXTS,
        );
        let fim_pad = by_text(id_key(&["fim_pad_token_id"])?, FIM_PAD_TEXTS);
        let fim_rep = by_text(id_key(&["fim_rep_token_id"])?, FIM_REP_TEXTS);
        let fim_sep = by_text(id_key(&["fim_sep_token_id"])?, FIM_SEP_TEXTS);

        let mut eog: HashSet<u32> = [fim_pad, fim_rep, fim_sep].into_iter().flatten().collect();
        for text in EOG_TEXTS {
            if let Some(id) = ids_get(text) {
                eog.insert(id);
                types[id as usize] = TokenType::Control;
            }
        }
        for text in ALWAYS_RENDERED {
            if let Some(id) = ids_get(text) {
                types[id as usize] = TokenType::UserDefined;
            }
        }
        eog.extend([eos, eot, eom].into_iter().flatten());
        // o200k_harmony (<|return|>, <|call|>) and solar-open (<|calls|>,
        // <|flush|>): <|end|> is not an end.
        let eog_text = |t: &str| ids_get(t).filter(|id| eog.contains(id));
        let call = eog_text("<|call|>").or(eog_text("<|calls|>"));
        let harmony = eog_text("<|return|>").is_some() && call.is_some();
        let solar = call.is_some() && eog_text("<|flush|>").is_some();
        let end = eog_text("<|end|>").filter(|_| harmony || solar);
        // Gemma 4 and PLaMo: </s> is an ordinary token beside their own ends.
        let s_marker = eog_text("<|tool_response>").or(eog_text("<|plamo:eos|>"));
        let s_end = eog_text("</s>").filter(|_| s_marker.is_some());
        if let Some(end) = end {
            eog.remove(&end);
            types[end as usize] = TokenType::UserDefined;
        }
        if let Some(s_end) = s_end {
            eog.remove(&s_end);
            types[s_end as usize] = TokenType::Normal;
        }
        Ok(Specials {
            ids,
            types,
            eot,
            eom,
            eog,
        })
    }
}

/// The first of the `tokenizer.ggml.<key>` ids present and inside the
/// vocabulary of `n` tokens (llama.cpp ignores out-of-range ids: some
/// converters write -1).
fn id_key(gguf: &GgufFile, n: usize, keys: &[&str]) -> Result<Option<u32>> {
    for key in keys {
        if let Some(id) = gguf.try_get_u32(&format!("tokenizer.ggml.{key}"))? {
            if (id as usize) < n {
                return Ok(Some(id));
            }
        }
    }
    Ok(None)
}

/// What building the encoding pipeline reads, owned: a thread of its own
/// builds it while the load goes on.
enum PipelineInputs {
    ByteLevel {
        tokens: StrArray,
        /// Split by the loading thread meanwhile ([`split_merges`]).
        merges: std::sync::mpsc::Receiver<Vec<(String, String)>>,
        /// llama.cpp's `ignore_merges` for this pre-tokenizer.
        ignore_merges: bool,
        /// Compiled by the loading thread after the merges
        /// ([`byte_level_pre_tokenizer`]): needed only once the model is.
        pre_tokenizer: std::sync::mpsc::Receiver<PreTokenizerWrapper>,
    },
    SentencePiece {
        tokens: StrArray,
        scores: Vec<f32>,
        unk: Option<u32>,
        add_space_prefix: bool,
    },
}

impl PipelineInputs {
    /// A SentencePiece vocabulary's inputs, with a malformed score array
    /// reported here, as a typed error.
    fn sentencepiece(
        gguf: &GgufFile,
        tokens: &StrArray,
        unk: Option<u32>,
        add_space_prefix: bool,
    ) -> Result<PipelineInputs> {
        let n = tokens.len();
        let scores = match gguf.try_get_f32_array("tokenizer.ggml.scores")? {
            Some(s) if s.len() == n => s,
            Some(s) => {
                return Err(Error::Tokenizer(format!(
                    "scores has {} entries for {n} tokens",
                    s.len()
                )))
            }
            None => vec![0.0; n],
        };
        Ok(PipelineInputs::SentencePiece {
            tokens: tokens.clone(),
            scores,
            unk,
            add_space_prefix,
        })
    }

    /// Builds the pipeline from the inputs in `slot` (taken, once).
    fn build_taken(slot: &Mutex<Option<PipelineInputs>>) -> Result<Base> {
        let inputs = slot
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        match inputs {
            Some(PipelineInputs::ByteLevel {
                tokens,
                merges,
                ignore_merges,
                pre_tokenizer,
            }) => {
                let gone = |what: &str| {
                    Error::Tokenizer(format!("the {what} never reached the pipeline's thread"))
                };
                // The vocabulary map is made while the merges are split.
                let vocab = bpe_vocab(&tokens);
                let merges = merges.recv().map_err(|_| gone("merges"))?;
                let bpe = BPE::builder()
                    .vocab_and_merges(vocab, merges)
                    .ignore_merges(ignore_merges)
                    .build()
                    .map_err(tok_err)?;
                let mut tk = tokenizers::Tokenizer::new(bpe);
                let pre = pre_tokenizer.recv().map_err(|_| gone("pre-tokenizer"))?;
                tk.with_pre_tokenizer(Some(pre));
                Ok((tk, Vec::new()))
            }
            Some(PipelineInputs::SentencePiece {
                tokens,
                scores,
                unk,
                add_space_prefix,
            }) => sentencepiece_bpe(&tokens, &scores, unk, add_space_prefix),
            None => Err(Error::Tokenizer(
                "the encoding pipeline's inputs were taken twice".into(),
            )),
        }
    }
}

/// The BPE model's vocabulary: text to id, later duplicates winning, as in
/// llama.cpp's `token_to_id`.
fn bpe_vocab(tokens: &StrArray) -> tokenizers::models::bpe::Vocab {
    tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.to_string(), i as u32))
        .collect()
}

/// `tokenizer.ggml.merges` as the pairs the BPE builder takes.
fn split_merges(gguf: &GgufFile) -> Result<Vec<(String, String)>> {
    gguf.try_get_strings("tokenizer.ggml.merges")?
        .ok_or_else(|| Error::MissingKey {
            key: "tokenizer.ggml.merges".into(),
        })?
        .iter()
        .map(|m| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| Error::Tokenizer(format!("merge {m:?} is not \"left right\"")))
        })
        .collect()
}

/// The byte-level pre-tokenizer: `regexes` in sequence, then GPT-2's byte
/// mapping.
fn byte_level_pre_tokenizer(regexes: &[&str]) -> Result<PreTokenizerWrapper> {
    let mut steps: Vec<PreTokenizerWrapper> = Vec::new();
    for re in regexes {
        let split = Split::new(
            SplitPattern::Regex((*re).to_string()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(tok_err)?;
        steps.push(split.into());
    }
    steps.push(ByteLevel::new(false, false, false).into());
    Ok(PreTokenizerSequence::new(steps).into())
}

fn sentencepiece_bpe(
    tokens: &StrArray,
    scores: &[f32],
    unk: Option<u32>,
    add_space_prefix: bool,
) -> Result<Base> {
    let n = tokens.len();
    // The builder's vocabulary map, a String per token, is made on a
    // second thread while this one finds the merges (for Gemma 3's 262,144
    // tokens, about a tenth and a quarter of the build); the builder, which
    // looks every merge up again, is most of the rest.
    let (mut vocab, (merges, virtual_chars)) = std::thread::scope(|s| {
        let helper = std::thread::Builder::new()
            .name("sotto-tokenizer-vocab".into())
            .spawn_scoped(s, || bpe_vocab(tokens));
        let found = sentencepiece_merges(tokens, scores);
        let vocab = match helper {
            Ok(handle) => handle
                .join()
                .map_err(|_| Error::Tokenizer("building the vocabulary map panicked".into()))?,
            // No second thread to be had: here, after the merges.
            Err(_) => bpe_vocab(tokens),
        };
        Ok::<_, Error>((vocab, found))
    })?;
    // ids past the vocabulary, in the order the merges use them first
    for (i, c) in virtual_chars.iter().enumerate() {
        vocab.insert(c.clone(), (n + i) as u32);
    }
    let mut builder = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .byte_fallback(true);
    if let Some(unk) = unk {
        builder = builder.unk_token(tokens.get(unk as usize).unwrap_or_default().to_string());
    }
    let bpe = builder.build().map_err(tok_err)?;
    let mut normalizers: Vec<NormalizerWrapper> = Vec::new();
    if add_space_prefix {
        normalizers.push(Prepend::new("\u{2581}".into()).into());
    }
    normalizers.push(Replace::new(" ", "\u{2581}").map_err(tok_err)?.into());
    let mut tk = tokenizers::Tokenizer::new(bpe);
    tk.with_normalizer(Some(NormalizerSequence::new(normalizers)))
        .map_err(tok_err)?;
    Ok((tk, virtual_chars))
}

/// A SentencePiece vocabulary's merges, best first, and the characters
/// they use that are not tokens.
///
/// llama.cpp's SPM starts from single characters and merges any adjacent
/// pair whose concatenation is a token, highest token score first. As BPE:
/// every split (l, r) of a token where l and r can themselves be symbols
/// (tokens, or single characters) is a merge ranked by the token's score,
/// ties by id, then a token's splits in text order. Characters that are
/// not tokens but take part in merges get ids past the vocabulary, in
/// order of first use (by id, then split, left part first); `encode` turns
/// them into byte tokens, as llama.cpp's resegmentation does.
fn sentencepiece_merges(tokens: &StrArray, scores: &[f32]) -> (Merges, Vec<String>) {
    let n = tokens.len();
    let index = TokenIndex::new(tokens);
    let is_token = |s: &str| index.get(tokens, s).is_some();
    let single_char = |s: &str| s.chars().nth(1).is_none();
    let mut virtual_chars: Vec<String> = Vec::new();
    let mut is_virtual: HashSet<&str> = HashSet::new();
    // Token `id`'s merges are its splits at the byte offsets
    // `splits[starts[id]..starts[id + 1]]`: strings are made once ranked,
    // for the builder only (514,906 merges for Gemma 3).
    let mut splits: Vec<u32> = Vec::with_capacity(2 * n);
    let mut starts: Vec<usize> = Vec::with_capacity(n + 1);
    starts.push(0);
    for text in tokens.iter() {
        let first = splits.len();
        for (b, _) in text.char_indices().skip(1) {
            let (l, r) = text.split_at(b);
            let symbol = |s: &str| single_char(s) || is_token(s);
            if symbol(l) && symbol(r) {
                splits.push(b as u32);
            }
        }
        for &b in &splits[first..] {
            let (l, r) = text.split_at(b as usize);
            for part in [l, r] {
                if single_char(part) && !is_token(part) && is_virtual.insert(part) {
                    virtual_chars.push(part.to_string());
                }
            }
        }
        starts.push(splits.len());
    }
    let mut ranked: Vec<u32> = (0..n as u32)
        .filter(|&id| starts[id as usize] < starts[id as usize + 1])
        .collect();
    ranked.sort_unstable_by(|&a, &b| {
        scores[b as usize]
            .total_cmp(&scores[a as usize])
            .then(a.cmp(&b))
    });
    let mut merges = Vec::with_capacity(splits.len());
    for id in ranked {
        let text = tokens.get(id as usize).unwrap_or_default();
        for &b in &splits[starts[id as usize]..starts[id as usize + 1]] {
            let (l, r) = text.split_at(b as usize);
            merges.push((l.to_string(), r.to_string()));
        }
    }
    (merges, virtual_chars)
}

fn parse_byte_token(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

/// Inverse of GPT-2's `bytes_to_unicode`: printable Latin-1 bytes map to
/// themselves, the other 68 bytes to U+0100.. in byte order.
fn byte_level_char_to_byte(c: char) -> Option<u8> {
    let cp = c as u32;
    let printable = |b: u32| {
        (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b)
    };
    if cp < 0x100 && printable(cp) {
        return Some(cp as u8);
    }
    let k = cp.checked_sub(0x100)?;
    (0u32..256)
        .filter(|&b| !printable(b))
        .nth(k as usize)
        .map(|b| b as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_level_table_inverts_gpt2_mapping() {
        assert_eq!(byte_level_char_to_byte('a'), Some(b'a'));
        assert_eq!(byte_level_char_to_byte('\u{0120}'), Some(b' ')); // Ġ
        assert_eq!(byte_level_char_to_byte('\u{010A}'), Some(b'\n')); // Ċ
        assert_eq!(byte_level_char_to_byte('\u{0100}'), Some(0));
        assert_eq!(byte_level_char_to_byte('\u{0143}'), Some(0xAD));
        assert_eq!(byte_level_char_to_byte('\u{0144}'), None);
        let all: HashSet<u8> = (0u32..0x200)
            .filter_map(char::from_u32)
            .filter_map(byte_level_char_to_byte)
            .collect();
        assert_eq!(all.len(), 256);
    }

    /// SentencePiece tokenization matches llama.cpp on a synthetic vocabulary
    /// (models/testdata/llama_cpp_spm.json, from gen_spm_cases.py).
    #[test]
    fn sentencepiece_matches_llama_cpp() {
        use crate::gguf::{GgufWriter, MetaValue};
        let data: serde_json::Value =
            serde_json::from_str(include_str!("../testdata/llama_cpp_spm.json")).unwrap();
        let tokens: Vec<&str> = data["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap())
            .collect();
        let scores: Vec<f32> = data["scores"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        let types: Vec<i32> = data["token_types"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_i64().unwrap() as i32)
            .collect();
        let build = |add_space_prefix: bool| {
            let w = GgufWriter::new()
                .kv("tokenizer.ggml.model", MetaValue::string("llama"))
                .kv("tokenizer.ggml.pre", MetaValue::string("default"))
                .kv("tokenizer.ggml.tokens", MetaValue::str_array(&tokens))
                .kv("tokenizer.ggml.scores", MetaValue::f32_array(&scores))
                .kv("tokenizer.ggml.token_type", MetaValue::i32_array(&types))
                .kv("tokenizer.ggml.bos_token_id", MetaValue::U32(1))
                .kv("tokenizer.ggml.eos_token_id", MetaValue::U32(2))
                .kv("tokenizer.ggml.unknown_token_id", MetaValue::U32(0))
                .kv(
                    "tokenizer.ggml.add_space_prefix",
                    MetaValue::Bool(add_space_prefix),
                );
            Tokenizer::from_gguf(&GgufFile::from_bytes(w.to_bytes()).unwrap()).unwrap()
        };
        let (with_prefix, without_prefix) = (build(true), build(false));
        assert!(
            with_prefix.add_bos(),
            "SentencePiece vocabularies default to BOS"
        );
        let mut mismatches = Vec::new();
        let cases = data["cases"].as_array().unwrap();
        assert!(cases.len() >= 300);
        for c in cases {
            let t = if c["add_space_prefix"].as_bool().unwrap() {
                &with_prefix
            } else {
                &without_prefix
            };
            let text = c["text"].as_str().unwrap();
            let parse_special = c["parse_special"].as_bool().unwrap();
            let expected: Vec<u32> = c["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect();
            let ours = t.encode(text, parse_special).unwrap();
            if ours != expected {
                mismatches.push(format!(
                    "{text:?} ps={parse_special} asp={}: llama.cpp {expected:?}, ours {ours:?}",
                    c["add_space_prefix"]
                ));
            }
        }
        assert!(
            mismatches.is_empty(),
            "{} differ:\n{}",
            mismatches.len(),
            mismatches.join("\n")
        );
    }

    #[test]
    fn byte_tokens_parse() {
        assert_eq!(parse_byte_token("<0x0A>"), Some(10));
        assert_eq!(parse_byte_token("<0xFF>"), Some(255));
        assert_eq!(parse_byte_token("<0x0>"), None);
        assert_eq!(parse_byte_token("0x0A"), None);
    }
}
