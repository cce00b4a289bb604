"""Jinja `chat_template` twins of the built-in templates in `honed.data.templates`.

Written in the style of each family's official template so that `tokenizer.apply_chat_template`,
llama.cpp and serving stacks render exactly the text our segment renderer trains on (a test
checks the two agree). Non-thinking families fold `reasoning_content` into the answer as a
`<think>` block, as the segment renderer does.

>>> "<|eot_id|>" in JINJA["llama3"]
True
"""

# Shared snippet: fold a message's reasoning into its (already trimmed) content.
_INLINE_REASONING = r"""
    {%- if message['role'] == 'assistant' and message['reasoning_content'] %}
        {%- set content = '<think>\n' + (message['reasoning_content'] | trim) + '\n</think>\n\n' + content %}
    {%- endif %}"""

LLAMA3 = r"""
{{- bos_token }}
{%- for message in messages %}
    {%- set content = message['content'] | trim %}""" + _INLINE_REASONING + r"""
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + content + '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}"""

CHATML = r"""
{%- for message in messages %}
    {%- set content = message['content'] %}""" + _INLINE_REASONING + r"""
    {{- '<|im_start|>' + message['role'] + '\n' + content + '<|im_end|>\n' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}"""

# Qwen3: thinking kept only after the last user query; the final turn always shows its block.
QWEN3 = r"""
{%- set ns = namespace(last_query=messages | length - 1, found=false) %}
{%- for message in messages[::-1] %}
    {%- if not ns.found and message['role'] == 'user' %}
        {%- set ns.found = true %}
        {%- set ns.last_query = messages | length - 1 - loop.index0 %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- set content = message['content'] %}
    {%- if message['role'] == 'assistant' %}
        {%- if message['reasoning_content'] is string %}
            {%- set reasoning = message['reasoning_content'] %}
        {%- elif '</think>' in content %}
            {%- set reasoning = content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') %}
            {%- set content = content.split('</think>')[-1].lstrip('\n') %}
        {%- else %}
            {%- set reasoning = '' %}
        {%- endif %}
        {%- if loop.index0 > ns.last_query and (loop.last or reasoning) %}
            {{- '<|im_start|>assistant\n<think>\n' + reasoning.strip('\n') + '\n</think>\n\n' + content.lstrip('\n') }}
        {%- else %}
            {{- '<|im_start|>assistant\n' + content }}
        {%- endif %}
        {{- '<|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>' + message['role'] + '\n' + content + '<|im_end|>\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\n\n</think>\n\n' }}
    {%- endif %}
{%- endif %}"""

# Mistral v3 layout; the system prompt joins the FIRST user turn (prefix-stable for training).
MISTRAL = r"""
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}
{{- bos_token }}
{%- for message in loop_messages %}
    {%- if message['role'] == 'user' %}
        {%- if loop.first and system_message is defined %}
            {{- '[INST] ' + system_message + '\n\n' + message['content'] + '[/INST]' }}
        {%- else %}
            {{- '[INST] ' + message['content'] + '[/INST]' }}
        {%- endif %}
    {%- elif message['role'] == 'assistant' %}
        {%- set content = message['content'] | trim %}""" + _INLINE_REASONING + r"""
        {{- ' ' + content + eos_token }}
    {%- else %}
        {{- raise_exception('Only a leading system message, user and assistant roles are supported') }}
    {%- endif %}
{%- endfor %}"""

GEMMA = r"""
{{- bos_token }}
{%- if messages[0]['role'] == 'system' %}
    {%- set first_user_prefix = messages[0]['content'] + '\n\n' %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set first_user_prefix = '' %}
    {%- set loop_messages = messages %}
{%- endif %}
{%- for message in loop_messages %}
    {%- if message['role'] not in ['user', 'assistant'] %}
        {{- raise_exception('Only a leading system message, user and assistant roles are supported') }}
    {%- endif %}
    {%- set role = 'model' if message['role'] == 'assistant' else message['role'] %}
    {%- set content = message['content'] | trim %}""" + _INLINE_REASONING + r"""
    {{- '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') + content + '<end_of_turn>\n' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<start_of_turn>model\n' }}
{%- endif %}"""

PHI3 = r"""
{%- for message in messages %}
    {%- set content = message['content'] %}""" + _INLINE_REASONING + r"""
    {{- '<|' + message['role'] + '|>\n' + content + '<|end|>\n' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|assistant|>\n' }}
{%- else %}
    {{- eos_token }}
{%- endif %}"""

ALPACA = r"""
{%- if bos_token %}
    {{- bos_token }}
{%- endif %}
{%- if messages[0]['role'] != 'system' %}
    {{- 'Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n' }}
{%- endif %}
{%- for message in messages %}
    {%- set content = message['content'] %}
    {%- if message['role'] == 'user' %}
        {{- '### Instruction:\n' + content + '\n\n' }}
    {%- elif message['role'] == 'assistant' %}""" + _INLINE_REASONING + r"""
        {{- '### Response:\n' + content + eos_token + '\n\n' }}
    {%- else %}
        {{- content + '\n\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '### Response:\n' }}
{%- endif %}"""

JINJA = {
    "llama3": LLAMA3.strip(), "chatml": CHATML.strip(), "qwen3": QWEN3.strip(), "mistral": MISTRAL.strip(),
    "gemma": GEMMA.strip(), "phi3": PHI3.strip(), "alpaca": ALPACA.strip(),
}
