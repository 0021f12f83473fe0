import json, os, jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment
from llama_cpp import Llama
from llama_cpp.llama_chat_format import Jinja2ChatFormatter
m = Llama(model_path=os.environ.get("SOTTO_MODEL", os.path.expanduser("~/.cache/sotto/models/SmolLM2-135M-Instruct.Q4_1.gguf")), vocab_only=True, verbose=False)
smol = m.metadata["tokenizer.chat_template"]
templates = {
 "smollm2": smol,
 "chatml": "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}",
 "llama3_style": "{{ bos_token }}{% for message in messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}",
 "gemma_style": "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set first_user_prefix = messages[0]['content'] + '\\n\\n' %}{% set loop_messages = messages[1:] %}{% else %}{% set first_user_prefix = '' %}{% set loop_messages = messages %}{% endif %}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'assistant' %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}{{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else '') }}{{ message['content'] | trim }}{{ '<end_of_turn>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}",
 "whitespace_and_methods": """{%- set ns = namespace(n=0) -%}
{% for message in messages %}
    {% set ns.n = ns.n + 1 %}
    {% if message.role == 'system' %}
[SYS] {{ message.content.strip().upper() }}
    {% elif message.content.startswith('  ') %}
[{{ message.role }}|indented] {{ message.content.lstrip() }}
    {%- else %}
[{{ message.role }}] {{ message.content.split()|join(' ') }}{% if not loop.last %};{% endif %}

    {% endif %}
{% endfor %}
count={{ ns.n }} len={{ messages|length }} json={{ messages[-1] | tojson }}
{% if add_generation_prompt %}>>> {% endif %}""",
}
convs = {
 "single_user": [{"role": "user", "content": "What is the capital of France?"}],
 "with_system": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi there"}],
 "multi_turn": [{"role": "user", "content": "Hello!"}, {"role": "assistant", "content": "Hi! How can I help?"}, {"role": "user", "content": "Tell me a joke."}],
 "unicode_whitespace": [{"role": "system", "content": "  Réponds en français. \n"}, {"role": "user", "content": "  ¿Qué tal? 日本語 😀\n\n"}, {"role": "assistant", "content": "\tfine \"quoted\" <b>"}, {"role": "user", "content": "ok"}],
 "bad_alternation": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
}
out = []
for tname, src in templates.items():
    bos = "<|im_start|>" if tname in ("smollm2", "chatml", "whitespace_and_methods") else ("<|begin_of_text|>" if tname == "llama3_style" else "<bos>")
    eos = "<|im_end|>" if bos == "<|im_start|>" else ("<|eot_id|>" if tname == "llama3_style" else "<eos>")
    fmt = Jinja2ChatFormatter(template=src, eos_token=eos, bos_token=bos)
    for cname, msgs in convs.items():
        for agp in (True, False):
            fmt.add_generation_prompt = agp
            try:
                expected = fmt(messages=msgs).prompt
                err = None
            except Exception as e:
                expected, err = None, str(e)
            out.append({"template": tname, "conversation": cname, "add_generation_prompt": agp, "expected": expected, "error": err})
json.dump({"generator": "python jinja2 %s via llama_cpp.llama_chat_format.Jinja2ChatFormatter (trim_blocks, lstrip_blocks, loopcontrols, tojson=json.dumps(ensure_ascii=False)); see models/testdata/README.md" % jinja2.__version__,
           "templates": {k: {"source": v, "bos_token": ("<|im_start|>" if k in ("smollm2","chatml","whitespace_and_methods") else ("<|begin_of_text|>" if k=="llama3_style" else "<bos>")), "eos_token": ("<|im_end|>" if k in ("smollm2","chatml","whitespace_and_methods") else ("<|eot_id|>" if k=="llama3_style" else "<eos>"))} for k, v in templates.items()},
           "conversations": convs, "cases": out}, open("/work/main/models/testdata/chat_templates.json", "w"), ensure_ascii=False, indent=1)
print(len(out), sum(1 for c in out if c["error"]))
for c in out:
    if c["template"]=="whitespace_and_methods" and c["conversation"]=="unicode_whitespace": print(repr(c["expected"]))
