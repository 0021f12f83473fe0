//! Tool calling: tools described by JSON Schema reach the model through its
//! chat template's `tools` variable, the model's call is generated under a
//! grammar built from the tools' schemas ([`crate::constrain`]) and parsed
//! back into a typed [`ToolCall`]; the tool's result goes back as a `tool`
//! turn.
//!
//! Three call formats are known, chosen from the template:
//! * Hermes / Qwen 2.5: `<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>`;
//! * Llama 3.1 JSON: `{"name": ..., "parameters": {...}}`;
//! * Mistral: `[TOOL_CALLS] [{"name": ..., "arguments": {...}}]`.
//!
//! A template that does not read `tools` (ChatML, SmolLM2) gets the tools
//! and the Hermes instructions in its system message instead.

use crate::chat::{Chat, Reply};
use crate::constrain::Constraint;
use crate::error::{Error, Result};
use crate::generate::GenerateOptions;
use serde_json::{json, Value};
use sotto_models::chat::{ChatMessage, ChatTemplate};
use sotto_models::tokenizer::Tokenizer;

/// A function the model may call.
#[derive(Clone, Debug, PartialEq)]
pub struct Tool {
    /// Its name, as the model writes it in a call.
    pub name: String,
    /// What it does, for the model.
    pub description: String,
    /// JSON Schema of its arguments (an object schema).
    pub parameters: Value,
}

impl Tool {
    /// The OpenAI-style description templates iterate over.
    pub fn to_template_value(&self) -> Value {
        json!({
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters,
            }
        })
    }
}

/// A call the model made.
#[derive(Clone, Debug, PartialEq)]
pub struct ToolCall {
    /// The tool's name.
    pub name: String,
    /// Its arguments (a JSON object under the tool's schema when the call
    /// was generated under [`ToolCallFormat::grammar`]).
    pub arguments: Value,
}

/// How a model writes a tool call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ToolCallFormat {
    /// `<tool_call>{"name", "arguments"}</tool_call>` (Hermes, Qwen 2.5,
    /// and the instructions given to templates without `tools`).
    Hermes,
    /// A bare `{"name", "parameters"}` object (Llama 3.1 / 3.2).
    Llama3Json,
    /// `[TOOL_CALLS]` and a JSON array of `{"name", "arguments"}` (Mistral).
    Mistral,
}

impl ToolCallFormat {
    /// The format a chat template's instructions ask for.
    pub fn for_template(template: &ChatTemplate) -> Self {
        let source = template.source();
        if source.contains("[TOOL_CALLS]") {
            ToolCallFormat::Mistral
        } else if source.contains("<tool_call>") || !template.renders_tools() {
            ToolCallFormat::Hermes
        } else if source.contains("\"parameters\"") || source.contains("<|python_tag|>") {
            ToolCallFormat::Llama3Json
        } else {
            ToolCallFormat::Hermes
        }
    }

    /// A Lark grammar that accepts exactly one call of one of `tools` in
    /// this format, its arguments valid under the tool's schema;
    /// [`Error::InvalidConstraint`] without tools or with a schema that is
    /// not a JSON object. A marker (`<tool_call>`, `[TOOL_CALLS]`) that
    /// `tokenizer` has as one control token is written as that token (the
    /// automaton never matches control tokens to text).
    pub fn grammar(self, tools: &[Tool], tokenizer: Option<&Tokenizer>) -> Result<Constraint> {
        if tools.is_empty() {
            return Err(Error::InvalidConstraint {
                kind: "tools",
                reason: "no tools to call".into(),
            });
        }
        let args_key = match self {
            ToolCallFormat::Llama3Json => "parameters",
            ToolCallFormat::Hermes | ToolCallFormat::Mistral => "arguments",
        };
        let mut calls = Vec::with_capacity(tools.len());
        for tool in tools {
            if !tool.parameters.is_object() {
                return Err(Error::InvalidConstraint {
                    kind: "tools",
                    reason: format!(
                        "the parameters of {:?} are not a JSON Schema object",
                        tool.name
                    ),
                });
            }
            calls.push(json!({
                "type": "object",
                "properties": {
                    "name": {"const": tool.name},
                    args_key: tool.parameters,
                },
                "required": ["name", args_key],
                "additionalProperties": false,
            }));
        }
        // Compact JSON, as for `Constraint::JsonSchema`.
        let compact = crate::constrain::compact_json_options();
        let schema = match self {
            ToolCallFormat::Mistral => json!({
                "type": "array",
                "items": {"anyOf": calls},
                "minItems": 1,
                "maxItems": 1,
                "x-guidance": compact,
            }),
            ToolCallFormat::Hermes | ToolCallFormat::Llama3Json => {
                json!({"anyOf": calls, "x-guidance": compact})
            }
        };
        let body = format!("%json {schema}");
        let marker = |text: &str| marker_rule(text, tokenizer);
        let lark = match self {
            ToolCallFormat::Hermes => format!(
                "start: {} \"\\n\" call \"\\n\" {}\ncall: {body}\n",
                marker("<tool_call>"),
                marker("</tool_call>")
            ),
            ToolCallFormat::Llama3Json => format!("start: {body}\n"),
            ToolCallFormat::Mistral => format!(
                "start: {} \" \" calls\ncalls: {body}\n",
                marker("[TOOL_CALLS]")
            ),
        };
        Ok(Constraint::Lark(lark))
    }

    /// The calls in `text` written in this format (see [`parse_tool_calls`]
    /// for any format).
    pub fn parse(self, text: &str) -> Result<Vec<ToolCall>> {
        let bad = |reason: String| Error::ToolCallParse {
            format: self.name(),
            reason,
        };
        match self {
            ToolCallFormat::Hermes => {
                let mut calls = Vec::new();
                let mut rest = text;
                while let Some(start) = rest.find("<tool_call>") {
                    let after = &rest[start + "<tool_call>".len()..];
                    let (body, next) = match after.find("</tool_call>") {
                        Some(end) => (&after[..end], &after[end + "</tool_call>".len()..]),
                        None => (after, ""),
                    };
                    calls.push(
                        call_from_object(json_of(body).map_err(bad)?, "arguments").map_err(bad)?,
                    );
                    rest = next;
                }
                if calls.is_empty() {
                    return Err(bad("no <tool_call> in the answer".into()));
                }
                Ok(calls)
            }
            ToolCallFormat::Mistral => {
                let Some(start) = text.find("[TOOL_CALLS]") else {
                    return Err(bad("no [TOOL_CALLS] in the answer".into()));
                };
                let body = &text[start + "[TOOL_CALLS]".len()..];
                match json_of(body).map_err(bad)? {
                    Value::Array(items) => items
                        .into_iter()
                        .map(|v| call_from_object(v, "arguments").map_err(bad))
                        .collect(),
                    other => Ok(vec![call_from_object(other, "arguments").map_err(bad)?]),
                }
            }
            ToolCallFormat::Llama3Json => {
                let body = text.trim_start();
                let body = body.strip_prefix("<|python_tag|>").unwrap_or(body);
                match json_of(body).map_err(bad)? {
                    Value::Array(items) => items
                        .into_iter()
                        .map(|v| call_from_object(v, "parameters").map_err(bad))
                        .collect(),
                    other => Ok(vec![call_from_object(other, "parameters").map_err(bad)?]),
                }
            }
        }
    }

    fn name(self) -> &'static str {
        match self {
            ToolCallFormat::Hermes => "hermes",
            ToolCallFormat::Llama3Json => "llama3-json",
            ToolCallFormat::Mistral => "mistral",
        }
    }
}

/// `marker` in a Lark rule: `<[id]>` when `tokenizer` has it as one
/// control token, else the quoted text.
fn marker_rule(marker: &str, tokenizer: Option<&Tokenizer>) -> String {
    match tokenizer.and_then(|t| t.token_id(marker).filter(|&id| t.is_control(id))) {
        Some(id) => format!("<[{id}]>"),
        None => format!("\"{marker}\""),
    }
}

/// The calls in `text`, whichever of the known formats it is written in:
/// `<tool_call>` blocks, a `[TOOL_CALLS]` array, or a bare JSON call
/// (`<|python_tag|>` allowed before it). [`Error::ToolCallParse`] when it
/// holds no call.
pub fn parse_tool_calls(text: &str) -> Result<Vec<ToolCall>> {
    if text.contains("<tool_call>") {
        ToolCallFormat::Hermes.parse(text)
    } else if text.contains("[TOOL_CALLS]") {
        ToolCallFormat::Mistral.parse(text)
    } else {
        ToolCallFormat::Llama3Json.parse(text)
    }
}

/// The one JSON value `text` holds (surrounding whitespace allowed).
fn json_of(text: &str) -> std::result::Result<Value, String> {
    serde_json::from_str(text.trim()).map_err(|e| format!("not JSON ({e})"))
}

/// `{"name": ..., <args_key>: {...}}` (either argument key accepted, and
/// arguments given as a JSON string decoded, as some models write them).
fn call_from_object(v: Value, args_key: &str) -> std::result::Result<ToolCall, String> {
    let Value::Object(mut obj) = v else {
        return Err("a call is not a JSON object".into());
    };
    let name = match obj.remove("name") {
        Some(Value::String(n)) if !n.is_empty() => n,
        _ => return Err("a call has no \"name\" string".into()),
    };
    let other = if args_key == "arguments" {
        "parameters"
    } else {
        "arguments"
    };
    let arguments = match obj.remove(args_key).or_else(|| obj.remove(other)) {
        Some(Value::String(s)) => serde_json::from_str(&s)
            .map_err(|e| format!("the arguments of {name:?} are a string but not JSON ({e})"))?,
        Some(v) => v,
        None => return Err(format!("the call of {name:?} has no \"{args_key}\"")),
    };
    if !arguments.is_object() {
        return Err(format!("the arguments of {name:?} are not a JSON object"));
    }
    Ok(ToolCall { name, arguments })
}

/// The system text that gives the tools to a template without `tools`
/// (Hermes style: the tools' descriptions and how to call one).
fn tools_system_text(tools: &[Tool]) -> String {
    let mut text = String::from(
        "You can call functions. Their signatures are inside <tools></tools>:\n<tools>\n",
    );
    for t in tools {
        text.push_str(&t.to_template_value().to_string());
        text.push('\n');
    }
    text.push_str(
        "</tools>\nTo call one, answer with a JSON object of its name and arguments inside \
         <tool_call></tool_call>:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call>",
    );
    text
}

/// The prompt text for `messages` with `tools`: through the template's
/// `tools` variable when it reads one, else in the system message (merged
/// into the first one, or a new first one).
pub fn render_with_tools(
    template: &ChatTemplate,
    messages: &[ChatMessage],
    tools: &[Tool],
    add_generation_prompt: bool,
) -> Result<String> {
    let render = |msgs: &[ChatMessage], values: &[Value]| {
        template
            .render_with_tools(msgs, values, add_generation_prompt)
            .map_err(|e| Error::Template(e.to_string()))
    };
    if tools.is_empty() {
        return render(messages, &[]);
    }
    if template.renders_tools() {
        let values: Vec<Value> = tools.iter().map(Tool::to_template_value).collect();
        return render(messages, &values);
    }
    let mut with_system = messages.to_vec();
    let text = tools_system_text(tools);
    match with_system.first_mut() {
        Some(first) if first.role == "system" => {
            first.content = format!("{}\n\n{text}", first.content);
        }
        _ => with_system.insert(0, ChatMessage::system(text)),
    }
    render(&with_system, &[])
}

/// An assistant turn that called tools.
#[derive(Clone, Debug)]
pub struct ToolReply {
    /// The turn as generated (the call's text), now in the history.
    pub reply: Reply,
    /// The calls parsed from it.
    pub calls: Vec<ToolCall>,
}

impl Chat {
    /// Adds a user turn and generates a call of one of the chat's tools
    /// ([`Chat::set_tools`]), constrained by the grammar of their schemas
    /// in the template's format, parsed into [`ToolCall`]s. On any error
    /// the history stays as it was.
    pub fn send_for_tool_call(
        &mut self,
        user: &str,
        opts: &GenerateOptions,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<ToolReply> {
        let format = ToolCallFormat::for_template(self.template());
        let constrained = GenerateOptions {
            constraint: Some(format.grammar(self.tools(), Some(self.session().tokenizer()))?),
            ..opts.clone()
        };
        let before = self.messages().to_vec();
        let reply = self.send(user, &constrained, on_text)?;
        match format.parse(&reply.text) {
            Ok(calls) => Ok(ToolReply { reply, calls }),
            Err(e) => {
                self.set_messages(before);
                Err(e)
            }
        }
    }

    /// Feeds a tool's result back (a `tool` turn, which the template
    /// renders its way) and generates the assistant's answer to it.
    pub fn send_tool_result(
        &mut self,
        result: &str,
        opts: &GenerateOptions,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<Reply> {
        let mut next = self.messages().to_vec();
        next.push(ChatMessage::new("tool", result));
        self.answer(&next, opts, on_text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn the_three_formats_parse_into_typed_calls() {
        let hermes = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}\n</tool_call>";
        let llama =
            "<|python_tag|>{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Oslo\"}}";
        let mistral =
            "[TOOL_CALLS] [{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}]";
        let want = vec![ToolCall {
            name: "get_weather".into(),
            arguments: json!({"city": "Oslo"}),
        }];
        for text in [hermes, llama, mistral] {
            assert_eq!(parse_tool_calls(text).unwrap(), want, "{text}");
        }
        // Arguments written as a JSON string (OpenAI style) are decoded.
        let stringly =
            "{\"name\": \"get_weather\", \"arguments\": \"{\\\"city\\\": \\\"Oslo\\\"}\"}";
        assert_eq!(parse_tool_calls(stringly).unwrap(), want);
        // Two Hermes calls.
        let two = format!("{hermes}\n{hermes}");
        assert_eq!(parse_tool_calls(&two).unwrap().len(), 2);
    }

    #[test]
    fn malformed_calls_are_typed_errors() {
        for text in [
            "",
            "plain answer",
            "<tool_call>{\"name\": 3}</tool_call>",
            "<tool_call>{\"arguments\": {}}</tool_call>",
            "[TOOL_CALLS] [{\"name\": \"f\"}]",
            "{\"name\": \"f\", \"parameters\": [1]}",
            "<tool_call>{\"name\": \"f\", \"arguments\": \"not json\"}",
        ] {
            assert!(
                matches!(parse_tool_calls(text), Err(Error::ToolCallParse { .. })),
                "{text:?}"
            );
        }
    }

    #[test]
    fn grammars_refuse_missing_tools_and_bad_schemas() {
        assert!(ToolCallFormat::Hermes.grammar(&[], None).is_err());
        let bad = Tool {
            name: "f".into(),
            description: String::new(),
            parameters: json!(true),
        };
        assert!(matches!(
            ToolCallFormat::Hermes.grammar(&[bad], None),
            Err(Error::InvalidConstraint { .. })
        ));
    }

    fn tiny_tokenizer() -> Arc<Tokenizer> {
        use sotto_models::testutil::{tiny_model, TinyDims};
        let bytes = tiny_model("llama", TinyDims::default()).to_bytes();
        let gguf = sotto_models::GgufFile::from_bytes(bytes).unwrap();
        Arc::new(sotto_models::Model::from_gguf(gguf).unwrap().tokenizer)
    }

    #[test]
    fn markers_that_are_control_tokens_are_written_as_tokens() {
        let tok = tiny_tokenizer();
        let end = tok.token_id("<|im_end|>").unwrap();
        assert!(tok.is_control(end));
        assert_eq!(marker_rule("<|im_end|>", Some(&tok)), format!("<[{end}]>"));
        assert_eq!(marker_rule("[TOOL_CALLS]", Some(&tok)), "\"[TOOL_CALLS]\"");
        assert_eq!(marker_rule("<|im_end|>", None), "\"<|im_end|>\"");
    }

    /// The automaton takes `<[id]>` for the control token: after the text
    /// before it, that token is the only one allowed.
    #[cfg(feature = "constrain")]
    #[test]
    fn the_automaton_allows_a_control_token_marker_and_only_it() {
        use crate::constrain::{ConstrainedSampling, GrammarCompiler};
        let tok = tiny_tokenizer();
        let end = tok.token_id("<|im_end|>").unwrap();
        let he = tok.token_id("he").unwrap();
        let grammar = format!("start: \"he\" {}\n", marker_rule("<|im_end|>", Some(&tok)));
        let compiler = GrammarCompiler::default();
        let mut c = ConstrainedSampling::new(&Constraint::Lark(grammar), &tok, &compiler).unwrap();
        let mut logits = vec![0.0f32; tok.vocab_size()];
        c.mask(&mut logits).unwrap();
        assert!(logits[he as usize].is_finite() && logits[end as usize] == f32::NEG_INFINITY);
        c.advance(he).unwrap();
        let mut logits = vec![0.0f32; tok.vocab_size()];
        c.mask(&mut logits).unwrap();
        let allowed: Vec<usize> = (0..logits.len())
            .filter(|&i| logits[i].is_finite())
            .collect();
        assert_eq!(allowed, vec![end as usize]);
        c.advance(end).unwrap();
        assert!(c.is_complete());
    }

    #[test]
    fn tools_reach_a_template_without_tools_through_the_system_message() {
        let t = ChatTemplate::new(sotto_models::chat::CHATML_TEMPLATE, "", "").unwrap();
        assert!(!t.renders_tools());
        assert_eq!(ToolCallFormat::for_template(&t), ToolCallFormat::Hermes);
        let tool = Tool {
            name: "get_weather".into(),
            description: "Weather of a city".into(),
            parameters: json!({"type": "object", "properties": {"city": {"type": "string"}}}),
        };
        let text = render_with_tools(&t, &[ChatMessage::user("hi")], &[tool], true).unwrap();
        assert!(
            text.starts_with("<|im_start|>system\nYou can call functions."),
            "{text}"
        );
        assert!(text.contains("\"name\":\"get_weather\""), "{text}");
    }
}
