"""An Ollama Modelfile beside a GGUF: chat template, stop tokens, scope (system) prompt, parameters.

Ollama renders chats with Go templates, not Jinja, so the template is built from the family's
chat format row (`honed.data.templates.BUILTIN`): the same prefixes, suffixes and end-of-turn
marker training used. BOS is left to llama.cpp, which adds it from the GGUF's metadata.

>>> from honed.data.templates import BUILTIN
>>> go_template(BUILTIN["chatml"]).endswith("{{ end }}{{ end }}<|im_start|>assistant\\n")
True
"""

from __future__ import annotations

from pathlib import Path

from honed.data.templates import BUILTIN, ChatFormat
from honed.model.families import supported_model_types, template_for
from honed.export.errors import ExportError
from honed.utils.fs import write_text_atomic


def go_template(fmt: ChatFormat) -> str:
    """The Go template that renders a conversation as `fmt` does, ending with the assistant prefix."""
    user_pre, user_suf = fmt.user
    answer = f'{{{{ else if eq .Role "assistant" }}}}{fmt.assistant_prefix}{fmt.answer_lead}{{{{ .Content }}}}{fmt.end_of_turn}{fmt.after_turn}'
    if fmt.system is not None:
        sys_pre, sys_suf = fmt.system
        body = (f'{{{{ if eq .Role "system" }}}}{sys_pre}{{{{ .Content }}}}{sys_suf}'
                f'{{{{ else if eq .Role "user" }}}}{user_pre}{{{{ .Content }}}}{user_suf}{answer}{{{{ end }}}}')
        return f"{{{{ range .Messages }}}}{body}{{{{ end }}}}{fmt.assistant_prefix}"
    # No system role: the system text opens the first user turn, as the family's own template does.
    body = (f'{{{{ if eq .Role "system" }}}}{{{{ $system = .Content }}}}'
            f'{{{{ else if eq .Role "user" }}}}{user_pre}{{{{ if $system }}}}{{{{ $system }}}}{fmt.system_join}'
            f'{{{{ $system = "" }}}}{{{{ end }}}}{{{{ .Content }}}}{user_suf}{answer}{{{{ end }}}}')
    return f'{{{{ $system := "" }}}}{{{{ range .Messages }}}}{body}{{{{ end }}}}{fmt.assistant_prefix}'


def chat_format_for(tokenizer, model_type: str) -> ChatFormat:
    """The built-in chat format of the tokenizer's template, else of its family."""
    from honed.data.templates import get_template

    found = get_template("auto", tokenizer, model_type)
    if isinstance(found, ChatFormat) and found.name != "alpaca":
        return found
    name = template_for(model_type)
    if name is not None:
        return BUILTIN[name]
    raise ExportError(f"no Ollama template for model_type '{model_type}'; supported: {', '.join(sorted(supported_model_types()))}")


def _quoted(text: str) -> str:
    if '"""' in text:
        raise ExportError('the scope prompt contains """, which a Modelfile cannot quote; remove it')
    return f'"""{text}"""'


def modelfile_text(gguf_name: str, fmt: ChatFormat, stops: list[str], *, system: str | None,
                   num_ctx: int = 4096, temperature: float = 0.0) -> str:
    """The Modelfile: FROM the GGUF beside it, TEMPLATE, SYSTEM (the scope prompt), stops, parameters.

    temperature 0 and no repeat penalty answer as `honed chat` does by default (greedy).
    """
    lines = [f"FROM ./{gguf_name}", f"TEMPLATE {_quoted(go_template(fmt))}"]
    if system:
        lines.append(f"SYSTEM {_quoted(system)}")
    lines += [f'PARAMETER stop "{s}"' for s in dict.fromkeys(stops)]
    lines += [f"PARAMETER temperature {temperature:g}", "PARAMETER repeat_penalty 1", f"PARAMETER num_ctx {num_ctx}"]
    return "\n".join(lines) + "\n"


def write_modelfile(folder: str | Path, gguf_name: str, tokenizer, model_type: str, *, system: str | None,
                    num_ctx: int = 4096) -> Path:
    """Write `folder/Modelfile` for `ollama create NAME -f Modelfile`."""
    from honed.export.gguf_families import gguf_family

    fmt = chat_format_for(tokenizer, model_type)
    stops = [fmt.end_of_turn, *gguf_family(model_type).gguf.ollama_stops, *fmt.extra_stops]
    path = Path(folder) / "Modelfile"
    write_text_atomic(path, modelfile_text(gguf_name, fmt, stops, system=system, num_ctx=num_ctx))
    return path
