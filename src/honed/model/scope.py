"""The scope (system) prompt a model was trained with travels with its weights.

Training writes it beside every adapter, checkpoint and export as `scope_prompt.txt`; `chat`,
`generate`, `eval` and `serve` read it back and use it unless told otherwise, so a tuned model is
always asked the way it was taught.

>>> import tempfile
>>> folder = tempfile.mkdtemp()
>>> save_scope_prompt(folder, "You answer clinical-lab questions only.")
>>> load_scope_prompt(folder)
'You answer clinical-lab questions only.'
>>> load_scope_prompt(tempfile.mkdtemp()) is None
True
"""

from __future__ import annotations

from pathlib import Path

from honed.utils.fs import write_text_atomic

SCOPE_FILE = "scope_prompt.txt"


def save_scope_prompt(folder: str | Path, prompt: str | None) -> None:
    """Write `prompt` into `folder/scope_prompt.txt` (nothing when there is no prompt)."""
    if prompt:
        write_text_atomic(Path(folder) / SCOPE_FILE, prompt)


def load_scope_prompt(folder: str | Path | None) -> str | None:
    """The scope prompt saved in `folder`, or None when the folder has none."""
    if folder is None:
        return None
    path = Path(folder) / SCOPE_FILE
    return path.read_text(encoding="utf-8") if path.is_file() else None


def find_scope_prompt(*folders: str | Path | None) -> tuple[str, Path] | None:
    """The first scope prompt saved in `folders` (an adapter before its base) and where it was found."""
    for folder in folders:
        prompt = load_scope_prompt(folder) if folder else None
        if prompt:
            return prompt, Path(folder) / SCOPE_FILE
    return None
