"""Atomic writes: a reader sees the old file or the new one, never half of one.

>>> import tempfile, os
>>> p = os.path.join(tempfile.mkdtemp(), "a.txt")
>>> write_text_atomic(p, "hello"); open(p).read()
'hello'
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from honed.errors import OutputExistsError


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write to a temporary file beside `path`, flush it to disk, then rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def save_figure_atomic(fig, path: str | Path, dpi: int = 100) -> Path:
    """Save a matplotlib figure as a PNG under a temporary name, rename it into place, close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=dpi)
    plt.close(fig)
    tmp.replace(path)
    return path


@contextlib.contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside `target`; on success it replaces `target` in one rename.

    On failure the temporary folder is removed and `target` is left as it was.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
    os.replace(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def move_contents_atomic(src_dir: Path, dest_dir: Path) -> None:
    """Move every file of `src_dir` into `dest_dir`, each with an atomic rename."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    for item in src_dir.iterdir():
        target = dest_dir / item.name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(item, target)


def check_output_dir(path: str | Path, *, overwrite: bool, resuming: bool) -> bool:
    """Refuse a file, or a non-empty folder unless overwriting or resuming into it; True when the
    folder holds something `overwrite` will clear. Touches nothing (prepare_output_dir does)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputExistsError(f"training.output_dir={path} is a file, not a folder")
    if path.is_dir() and any(path.iterdir()) and not resuming:
        if not overwrite:
            raise OutputExistsError(
                f"training.output_dir={path} is not empty; choose another folder, set training.overwrite=true "
                "to replace it, or training.resume=true to continue its last checkpoint"
            )
        return True
    return False


def prepare_output_dir(path: str | Path, *, overwrite: bool, resuming: bool) -> Path:
    """Create the output folder; refuse a non-empty one unless overwriting or resuming into it."""
    path = Path(path)
    if check_output_dir(path, overwrite=overwrite, resuming=resuming):
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


def check_writable(path, overwrite: bool) -> Path:
    """Refuse to replace an existing file unless asked: outputs are never overwritten silently."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} exists; choose another output path or pass --overwrite")
    return path
