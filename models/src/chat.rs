//! Chat templates: the Jinja template stored in `tokenizer.chat_template`,
//! rendered with minijinja configured to behave like the Python `jinja2`
//! environment llama-cpp-python and transformers use (`trim_blocks`,
//! `lstrip_blocks`, Python string methods, `raise_exception`, a `tojson`
//! that formats like `json.dumps(ensure_ascii=False)`).

use std::fmt;

use minijinja::value::{Kwargs, Value};
use minijinja::{Environment, ErrorKind};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::gguf::GgufFile;
use crate::tokenizer::Tokenizer;

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant` (templates may know others).
    pub role: String,
    /// The text of the turn.
    pub content: String,
}

impl ChatMessage {
    /// A turn of any role.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }
    /// A `system` turn.
    pub fn system(content: impl Into<String>) -> Self {
        Self::new("system", content)
    }
    /// A `user` turn.
    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }
    /// An `assistant` turn.
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new("assistant", content)
    }
}

/// ChatML, used when a model file carries no template.
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

const TEMPLATE_NAME: &str = "chat";

/// A compiled chat template.
#[derive(Clone)]
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    bos_token: String,
    eos_token: String,
    is_fallback: bool,
}

impl fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("bytes", &self.source.len())
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .field("is_fallback", &self.is_fallback)
            .finish()
    }
}

impl ChatTemplate {
    /// The template of `gguf` (`tokenizer.chat_template`), or ChatML when
    /// the file has none ([`is_fallback`](Self::is_fallback) says which).
    pub fn from_gguf(gguf: &GgufFile, tokenizer: &Tokenizer) -> Result<ChatTemplate> {
        let token_text = |id: Option<u32>| -> String {
            id.and_then(|id| tokenizer.token_bytes(id).ok())
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default()
        };
        let bos = token_text(tokenizer.bos_id());
        let eos = token_text(tokenizer.eos_id());
        match gguf.try_get_str("tokenizer.chat_template")? {
            Some(source) => Self::new(source, &bos, &eos),
            None => {
                let mut t = Self::new(CHATML_TEMPLATE, &bos, &eos)?;
                t.is_fallback = true;
                Ok(t)
            }
        }
    }

    /// Compiles `source` with the given BOS/EOS token texts.
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<ChatTemplate> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", python_tojson);
        env.add_template_owned(TEMPLATE_NAME, source.to_string())
            .map_err(|e| Error::ChatTemplate(describe(&e)))?;
        Ok(ChatTemplate {
            env,
            source: source.to_string(),
            bos_token: bos_token.to_string(),
            eos_token: eos_token.to_string(),
            is_fallback: false,
        })
    }

    /// The template is the built-in ChatML, not one from the model file.
    pub fn is_fallback(&self) -> bool {
        self.is_fallback
    }

    /// The Jinja source.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The prompt for `messages`; with `add_generation_prompt` it ends with
    /// the header of an assistant turn.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        self.render_with_tools(messages, &[], add_generation_prompt)
    }

    /// Whether the template reads a `tools` variable (Qwen 2.5, Llama 3.1,
    /// Mistral do; ChatML and SmolLM2's do not, so tools must reach those
    /// models through the messages).
    pub fn renders_tools(&self) -> bool {
        self.source.contains("tools")
    }

    /// [`render`](Self::render) with `tools` (OpenAI-style function
    /// descriptions, `{"type": "function", "function": {...}}`) as the
    /// template's `tools` variable; none leaves it undefined, as
    /// transformers does.
    pub fn render_with_tools(
        &self,
        messages: &[ChatMessage],
        tools: &[serde_json::Value],
        add_generation_prompt: bool,
    ) -> Result<String> {
        let tmpl = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| Error::ChatTemplate(describe(&e)))?;
        let tools = (!tools.is_empty()).then(|| Value::from_serialize(tools));
        tmpl.render(minijinja::context! {
            messages => messages,
            tools => tools,
            add_generation_prompt => add_generation_prompt,
            bos_token => &self.bos_token,
            eos_token => &self.eos_token,
        })
        .map_err(|e| Error::ChatTemplate(describe(&e)))
    }
}

fn describe(e: &minijinja::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

fn raise_exception(message: String) -> std::result::Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
}

/// Templates (Llama 3.x) print today's date. Rendering stays deterministic
/// and dependency-free: the date is computed from the system clock in UTC
/// for the common `%d %b %Y` / `%Y-%m-%d` style formats.
fn strftime_now(format: String) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = (secs / 86_400) as i64;
    let (y, m, d) = civil_from_days(days);
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    let month = MONTHS[(m - 1) as usize];
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('d') => out.push_str(&format!("{d:02}")),
            Some('m') => out.push_str(&format!("{m:02}")),
            Some('Y') => out.push_str(&y.to_string()),
            Some('y') => out.push_str(&format!("{:02}", y % 100)),
            Some('b') => out.push_str(&month[..3]),
            Some('B') => out.push_str(month),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian.
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// `tojson` as transformers defines it: `json.dumps(x, ensure_ascii=False,
/// indent=indent)`, with Python's separators and dict insertion order.
fn python_tojson(value: Value, kwargs: Kwargs) -> std::result::Result<Value, minijinja::Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let _: Option<bool> = kwargs.get("ensure_ascii")?;
    kwargs.assert_all_used()?;
    let mut out = String::new();
    write_python_json(&value, indent, 0, &mut out)?;
    Ok(Value::from_safe_string(out))
}

fn write_python_json(
    v: &Value,
    indent: Option<usize>,
    level: usize,
    out: &mut String,
) -> std::result::Result<(), minijinja::Error> {
    use minijinja::value::ValueKind;
    let newline = |out: &mut String, level: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * level));
        }
    };
    let item_sep = if indent.is_some() { "," } else { ", " };
    let json_str = |s: &str| serde_json::Value::String(s.to_string()).to_string();
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => match (v.as_i64(), f64::try_from(v.clone())) {
            (Some(i), _) if !v.to_string().contains(['.', 'e', 'E']) => {
                out.push_str(&i.to_string())
            }
            (_, Ok(f)) => out.push_str(&python_float(f)),
            _ => out.push_str(&v.to_string()),
        },
        ValueKind::String => out.push_str(&json_str(v.as_str().unwrap_or_default())),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, level + 1);
                write_python_json(item, indent, level + 1, out)?;
            }
            newline(out, level);
            out.push(']');
        }
        ValueKind::Map => {
            let keys: Vec<Value> = v.try_iter()?.collect();
            if keys.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            out.push('{');
            for (i, key) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, level + 1);
                out.push_str(&json_str(&key.to_string()));
                out.push_str(": ");
                write_python_json(&v.get_item(key)?, indent, level + 1, out)?;
            }
            newline(out, level);
            out.push('}');
        }
        _ => out.push_str(&json_str(&v.to_string())),
    }
    Ok(())
}

/// Python's `repr(float)`: shortest round-trip digits, always with a `.0`
/// or exponent.
fn python_float(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 {
            "Infinity".into()
        } else {
            "-Infinity".into()
        };
    }
    let s = format!("{f:?}");
    if s.contains(['.', 'e', 'E']) {
        s
    } else {
        format!("{s}.0")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chatml_fallback_renders_generation_prompt() {
        let t = ChatTemplate::new(CHATML_TEMPLATE, "", "").unwrap();
        let out = t.render(&[ChatMessage::user("hi")], true).unwrap();
        assert_eq!(
            out,
            "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn raise_exception_is_a_typed_error() {
        let t = ChatTemplate::new("{{ raise_exception('no system role') }}", "", "").unwrap();
        let err = t.render(&[], false).unwrap_err();
        assert!(
            matches!(err, Error::ChatTemplate(ref m) if m.contains("no system role")),
            "{err}"
        );
    }

    #[test]
    fn python_string_methods_and_tojson_match_python() {
        let t = ChatTemplate::new(
            "{{ messages[0].content.strip() }}|{{ messages[0] | tojson }}|{{ bos_token }}",
            "<s>",
            "</s>",
        )
        .unwrap();
        let out = t.render(&[ChatMessage::user("  é <b> ")], false).unwrap();
        assert_eq!(out, r#"é <b>|{"role": "user", "content": "  é <b> "}|<s>"#);
    }

    #[test]
    fn syntax_errors_are_reported_at_load() {
        assert!(matches!(
            ChatTemplate::new("{% for %}", "", ""),
            Err(Error::ChatTemplate(_))
        ));
    }

    /// Renderings by Python jinja2 through llama-cpp-python's formatter
    /// (see models/testdata/README.md), matched byte for byte.
    #[test]
    fn renders_like_python_jinja2() {
        let data: serde_json::Value =
            serde_json::from_str(include_str!("../testdata/chat_templates.json")).unwrap();
        let cases = data["cases"].as_array().unwrap();
        assert!(cases.len() >= 40);
        for case in cases {
            let name = case["template"].as_str().unwrap();
            let t = &data["templates"][name];
            let template = ChatTemplate::new(
                t["source"].as_str().unwrap(),
                t["bos_token"].as_str().unwrap(),
                t["eos_token"].as_str().unwrap(),
            )
            .unwrap();
            let conv = case["conversation"].as_str().unwrap();
            let messages: Vec<ChatMessage> = data["conversations"][conv]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| {
                    ChatMessage::new(m["role"].as_str().unwrap(), m["content"].as_str().unwrap())
                })
                .collect();
            let agp = case["add_generation_prompt"].as_bool().unwrap();
            let got = template.render(&messages, agp);
            match (case["expected"].as_str(), case["error"].as_str()) {
                (Some(expected), _) => {
                    assert_eq!(got.unwrap(), expected, "{name} / {conv} / agp={agp}")
                }
                (None, Some(err)) => match got {
                    Err(Error::ChatTemplate(msg)) => {
                        assert!(msg.contains(err), "{name} / {conv}: {msg:?} lacks {err:?}")
                    }
                    other => panic!("{name} / {conv}: expected error {err:?}, got {other:?}"),
                },
                _ => panic!("case without expectation"),
            }
        }
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(20_513), (2026, 3, 1));
    }
}
