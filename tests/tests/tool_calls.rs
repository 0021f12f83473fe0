//! Tool calling round trips: tools into the prompt, a call generated under
//! the tools' grammar, parsed into a typed `ToolCall` whose arguments the
//! `jsonschema` crate validates against the tool's schema, the tool's
//! result fed back as a `tool` turn and answered.
//!
//! On the default model (SmolLM2: its template has no `tools`, so the tools
//! reach it in the system message) and on a random-weight Qwen2 GGUF
//! (tests/scripts/tiny_arch_gguf.py) carrying the Qwen 2.5 template (Hermes
//! `<tool_call>`), a Llama 3.1-style JSON template and a Mistral-style
//! `[TOOL_CALLS]` one: random weights must still produce a call that parses.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use serde_json::{json, Value};
use sotto_engine::{Chat, CpuBackend, GenerateOptions, Session, StopReason, Tool, ToolCallFormat};
use sotto_models::chat::ChatTemplate;
use sotto_tests::tiny_arch::tiny_file;
use sotto_tests::{default_model, default_session};
use std::sync::Arc;

fn weather_tool() -> Tool {
    Tool {
        name: "get_weather".into(),
        description: "Current weather of a city".into(),
        parameters: json!({
            "type": "object",
            "properties": {
                "city": {"type": "string", "minLength": 1, "maxLength": 16},
                "unit": {"enum": ["celsius", "fahrenheit"]}
            },
            "required": ["city", "unit"],
            "additionalProperties": false
        }),
    }
}

fn alarm_tool() -> Tool {
    Tool {
        name: "set_alarm".into(),
        description: "Sets an alarm".into(),
        parameters: json!({
            "type": "object",
            "properties": {
                "hour": {"type": "integer", "minimum": 0, "maximum": 23},
                "minute": {"type": "integer", "minimum": 0, "maximum": 59}
            },
            "required": ["hour", "minute"],
            "additionalProperties": false
        }),
    }
}

/// The call's arguments validate against its tool's schema (an
/// independent validator, not the automaton).
fn assert_valid_call(tools: &[Tool], call: &sotto_engine::ToolCall) {
    let tool = tools
        .iter()
        .find(|t| t.name == call.name)
        .unwrap_or_else(|| panic!("call of an unknown tool {:?}", call.name));
    let validator = jsonschema::validator_for(&tool.parameters).unwrap();
    let errors: Vec<String> = validator
        .iter_errors(&call.arguments)
        .map(|e| e.to_string())
        .collect();
    assert!(errors.is_empty(), "{call:?}: {errors:?}");
}

fn round_trip(chat: &mut Chat, opts: &GenerateOptions, user: &str, result: &Value) -> String {
    let tools = chat.tools().to_vec();
    let turn = chat
        .send_for_tool_call(user, opts, &mut |_| {})
        .expect("tool call");
    assert!(
        matches!(
            turn.reply.stats.stop,
            StopReason::GrammarComplete | StopReason::EndOfGeneration
        ),
        "the call was cut: {:?} {:?}",
        turn.reply.stats.stop,
        turn.reply.text
    );
    assert_eq!(turn.calls.len(), 1, "{:?}", turn.reply.text);
    assert_valid_call(&tools, &turn.calls[0]);
    eprintln!("call: {:?} -> {:?}", turn.reply.text, turn.calls[0]);
    let n = chat.messages().len();
    let answer = chat
        .send_tool_result(&result.to_string(), &sotto_tests::greedy(24), &mut |_| {})
        .expect("answer to the tool result");
    let roles: Vec<&str> = chat.messages()[n - 2..]
        .iter()
        .map(|m| m.role.as_str())
        .collect();
    assert_eq!(roles, ["user", "assistant", "tool", "assistant"]);
    assert_eq!(chat.messages()[n - 1].content, turn.reply.text);
    eprintln!("answer: {:?}", answer.text);
    // The tool turn is in the prompt the template renders.
    let prompt = chat.prompt_tokens(chat.messages()).unwrap();
    let text = chat.session().tokenizer().decode(&prompt, false).unwrap();
    assert!(text.contains(&result.to_string()), "{text}");
    text
}

#[test]
fn default_model_round_trip_through_the_system_message() {
    let m = default_model();
    let template = Arc::new(m.template.clone());
    assert!(
        !template.renders_tools(),
        "SmolLM2's template does not read `tools`: they go in the system message"
    );
    let mut chat = Chat::new(default_session(2048), template, None);
    chat.set_tools(vec![weather_tool(), alarm_tool()]);
    let text = round_trip(
        &mut chat,
        &sotto_tests::greedy(64),
        "What is the weather in Paris, in celsius?",
        &json!({"temperature": 18, "sky": "cloudy"}),
    );
    assert!(text.contains("<tools>") && text.contains("\"name\":\"get_weather\""));
    assert!(
        text.contains("<|im_start|>tool\n{\"temperature\""),
        "{text}"
    );
}

/// Qwen 2.5 Instruct's chat template (its tools part and turns), as the
/// model repository ships it.
const QWEN25_TEMPLATE: &str = r#"{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\n<tool_call>\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- message.content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"#;

/// A Llama 3.1-style template (synthetic, shortened): tools as JSON in the
/// user turn, calls as `{"name": ..., "parameters": ...}`, results as
/// `ipython` turns.
const LLAMA31_STYLE_TEMPLATE: &str = r#"{{- bos_token }}
{%- for message in messages %}
{%- if message.role == 'tool' %}
{{- '<|start_header_id|>ipython<|end_header_id|>\n\n' + message.content + '<|eot_id|>' }}
{%- else %}
{{- '<|start_header_id|>' + message.role + '<|end_header_id|>\n\n' }}
{%- if message.role == 'user' and tools is not none and loop.last %}
{{- 'Given the following functions, respond with a JSON for a function call with its proper arguments that best answers the given prompt.\n\nRespond in the format {"name": function name, "parameters": dictionary of argument name and its value}.\n\n' }}
{%- for t in tools %}{{- t | tojson + '\n\n' }}{%- endfor %}
{%- endif %}
{{- message.content + '<|eot_id|>' }}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{%- endif %}"#;

/// A Mistral-style template (synthetic, shortened): tools in
/// `[AVAILABLE_TOOLS]`, calls after `[TOOL_CALLS]`, results in
/// `[TOOL_RESULTS]`.
const MISTRAL_STYLE_TEMPLATE: &str = r#"{{- bos_token }}
{%- for message in messages %}
{%- if message.role == 'user' %}
{%- if tools and loop.last %}{{- '[AVAILABLE_TOOLS] ' + tools | tojson + '[/AVAILABLE_TOOLS]' }}{%- endif %}
{{- '[INST] ' + message.content + '[/INST]' }}
{%- elif message.role == 'tool' %}
{{- '[TOOL_RESULTS] {"content": ' + message.content + '}[/TOOL_RESULTS]' }}
{%- elif message.role == 'assistant' and message.tool_calls %}
{{- '[TOOL_CALLS] ' + message.tool_calls | tojson + eos_token }}
{%- elif message.role == 'assistant' %}
{{- message.content + eos_token }}
{%- endif %}
{%- endfor %}"#;

fn tiny_qwen2_session() -> Session {
    let path = tiny_file("qwen2", None);
    let model = Arc::new(sotto_models::Model::load(&path).unwrap());
    let backend = CpuBackend::new(model.clone(), 0).unwrap();
    Session::new(Box::new(backend), Arc::new(model.tokenizer.clone()), 1024).unwrap()
}

#[test]
fn random_weights_call_tools_in_three_template_formats() {
    let cases = [
        (QWEN25_TEMPLATE, ToolCallFormat::Hermes, "<tool_response>\n"),
        (
            LLAMA31_STYLE_TEMPLATE,
            ToolCallFormat::Llama3Json,
            "ipython<|end_header_id|>",
        ),
        (
            MISTRAL_STYLE_TEMPLATE,
            ToolCallFormat::Mistral,
            "[TOOL_RESULTS]",
        ),
    ];
    for (source, format, tool_turn_marker) in cases {
        let template = Arc::new(ChatTemplate::new(source, "<s>", "</s>").unwrap());
        assert!(template.renders_tools());
        assert_eq!(ToolCallFormat::for_template(&template), format);
        for seed in 0..3 {
            let mut chat = Chat::new(tiny_qwen2_session(), template.clone(), None);
            chat.set_tools(vec![weather_tool(), alarm_tool()]);
            let opts = sotto_tests::sampled(seed, 96);
            let text = round_trip(
                &mut chat,
                &opts,
                "Wake me at seven, and how is the weather in Rome?",
                &json!({"ok": true}),
            );
            assert!(text.contains(tool_turn_marker), "{format:?}: {text}");
        }
    }
}
