"""Local text corpora: reading files and folders, the shipped sample, and the held-out split.

The split is by file name (see ``data/README.md``): the works in :data:`HELD_OUT_WORKS` are for
evaluation only and every training script drops them.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
SHIPPED_SAMPLE_DIR = REPO_ROOT / "data" / "shakespeare"
HELD_OUT_WORKS = ("macbeth", "tempest", "twelfth_night")
TEXT_SUFFIXES = (".txt", ".md", ".text")


def is_held_out(path: Path) -> bool:
    """True for a Shakespeare file of a held-out work (``<work>_gut.txt`` or ``<work>.txt``)."""
    stem = path.stem.removesuffix("_gut")
    return stem in HELD_OUT_WORKS


def list_text_files(paths: Iterable[str | Path], exclude_held_out: bool = True) -> list[Path]:
    """Expand files and folders (recursively, sorted) into text files; raise if none exist."""
    files: list[Path] = []
    for entry in paths:
        p = Path(entry)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in TEXT_SUFFIXES)
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"data path not found: {p}")
    if exclude_held_out:
        files = [f for f in files if not is_held_out(f)]
    if not files:
        raise FileNotFoundError(f"no text files ({', '.join(TEXT_SUFFIXES)}) found in: {', '.join(map(str, paths))}")
    return files


def read_text(path: Path) -> str:
    """One UTF-8 text file; a file that is not UTF-8 is refused rather than silently altered (U+FFFD)."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not UTF-8 text (byte {err.object[err.start]:#04x} at offset {err.start}); "
                         "convert it to UTF-8 or leave it out") from None


def read_texts(paths: Iterable[str | Path], exclude_held_out: bool = True) -> list[str]:
    """Read every text file under ``paths`` as UTF-8 (one document per file, in sorted order)."""
    return [read_text(f) for f in list_text_files(paths, exclude_held_out)]


def shipped_sample_dir() -> Path:
    """The sample shipped in the repository (``data/shakespeare``)."""
    if not SHIPPED_SAMPLE_DIR.is_dir():
        raise FileNotFoundError(
            f"shipped sample not found at {SHIPPED_SAMPLE_DIR}; pass --data with your own text files"
        )
    return SHIPPED_SAMPLE_DIR
