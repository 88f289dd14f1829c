"""Writing outputs safely: the one implementation behind every folder and file the commands write
(``convert``, ``distill``, ``export``, ``eval``, ``demo``, ``train``, ``finetune``, distillation checkpoints).

Rules it enforces:

- an output never equals, contains or lies inside any of the command's inputs (so ``--force`` can never
  delete a source);
- an existing output is replaced only with ``--force``, and only the output folder itself is replaced;
- the output is written into a temporary *claim* folder beside it and renamed into place, so a reader
  never sees it half-written;
- a writer holds its claim (an ``flock`` on the claim folder, released by the kernel even on ``kill -9``)
  for the whole write, so a second writer of the same output is refused instead of silently replacing
  the first; the existence check and the final rename run under one lock on the parent folder;
- the claim folder is removed on every exit path Python sees (errors, Ctrl-C); one left by a killed
  process is reported and removed by the next writer of that output (and an output it had already moved
  aside is put back).

A run that writes into its output over time (training, whose checkpoints must be resumable in place)
cannot be renamed into place; :func:`claim_folder` holds such a folder for the run instead, with the
same input checks and the same refusal of a second writer.

Lives in ``phalanx_training`` because every package that writes outputs may import it (it needs only the
standard library).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

CLAIM_MARK = ".phalanx-tmp-"
RUN_CLAIM = ".phalanx-run"  # inside a folder a run writes into over time (see claim_folder)
STAGING_NAME = "output"  # inside a claim: the output being written
PREVIOUS_NAME = "previous"  # inside a claim: the replaced output, between the two renames of a --force swap

PathLike = str | os.PathLike


def _claim_prefix(out: Path) -> str:
    return f".{out.name}{CLAIM_MARK}"


def check_output(out: PathLike, *, inputs: Iterable[PathLike] = (), force: bool = False, create_parents: bool = False) -> Path:
    """Refuse an output that overlaps an input, exists without ``force``, or is not a folder; return it as a Path.

    Paths are compared after resolving symlinks. With ``create_parents`` a missing parent folder is fine
    (the writer creates it); otherwise it must exist.
    """
    out = Path(out)
    target = out.resolve()
    for source in inputs:
        src = Path(source).resolve()
        if target == src:
            raise ValueError(f"output {out} is the input {source}; choose another output")
        if target in src.parents:
            raise ValueError(f"output {out} contains the input {source}; replacing it would delete that input")
        if src in target.parents:
            raise ValueError(f"output {out} lies inside the input {source}; choose an output outside it")
    if out.exists() or out.is_symlink():
        if not out.is_dir():
            raise ValueError(f"output {out} exists and is not a folder")
        if not force:
            raise ValueError(f"output {out} already exists; pass --force to replace it")
    if not create_parents and not out.parent.is_dir():
        raise FileNotFoundError(f"parent folder of the output {out} does not exist")
    if out.parent.exists() and not out.parent.is_dir():
        raise ValueError(f"parent of the output {out} is not a folder")
    return out


def _flock(fd: int, *, wait: bool) -> bool:
    """Lock ``fd`` exclusively; raise ``BlockingIOError`` when another process holds it (``wait=False``).

    Returns False where the file system cannot lock (some network file systems): writers then still write
    atomically and check for overlapping inputs, but cannot see a concurrent writer or a dead one.
    """
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        raise
    except OSError as err:
        if err.errno in (errno.EBADF, errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
            return False
        raise
    return True


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (briefly: the check-and-rename steps of every writer in it)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        _flock(fd, wait=True)
        yield
    finally:
        os.close(fd)


def _settle_claims(out: Path) -> None:
    """Refuse a live claim on ``out``; clean up claims of processes that died (reported on stderr).

    Caller holds the parent lock. A dead claim that still holds the replaced output while ``out`` is
    missing (killed between the two renames of a ``--force`` swap) gives that output back.
    """
    for claim in sorted(out.parent.glob(f"{_claim_prefix(out)}*")):
        if claim.is_symlink() or not (claim.is_dir() or claim.is_file()):
            continue
        fd = os.open(claim, os.O_RDONLY)
        try:
            try:
                lockable = _flock(fd, wait=False)
            except BlockingIOError:
                raise ValueError(f"another process is writing {out} right now (claim {claim.name}); try again later") from None
            if not lockable:
                print(f"phalanx: found {claim}; this file system has no locks to tell whether its writer still runs: "
                      "remove it if no phalanx process writes there", file=sys.stderr)
                continue
            previous = claim / PREVIOUS_NAME
            if previous.is_dir() and not (out.exists() or out.is_symlink()):
                os.replace(previous, out)
                print(f"phalanx: restored {out} from an interrupted replacement ({claim})", file=sys.stderr)
            if claim.is_dir():
                shutil.rmtree(claim)
            else:
                claim.unlink()
            print(f"phalanx: removed {claim}, left by an interrupted run", file=sys.stderr)
        finally:
            os.close(fd)


@contextlib.contextmanager
def output_folder(
    out: PathLike, *, inputs: Iterable[PathLike] = (), force: bool = False, create_parents: bool = False
) -> Iterator[Path]:
    """Claim ``out`` and yield an empty staging folder; on success it becomes ``out``, on any error it is removed.

    ``inputs``: every path the command reads (see :func:`check_output`). ``force`` replaces an existing
    ``out`` (only that folder). Raises ``ValueError`` when another process is writing ``out``, or when
    ``out`` appeared during the write and ``force`` is not set.
    """
    inputs = list(inputs)
    out = check_output(out, inputs=inputs, force=force, create_parents=create_parents)
    if create_parents:
        out.parent.mkdir(parents=True, exist_ok=True)
    with _locked(out.parent):
        _settle_claims(out)
        check_output(out, inputs=inputs, force=force)
        claim = Path(tempfile.mkdtemp(prefix=_claim_prefix(out), dir=out.parent))
        claim_fd = os.open(claim, os.O_RDONLY)
        _flock(claim_fd, wait=False)  # held until the write ends; the kernel drops it on kill
    try:
        staging = claim / STAGING_NAME
        staging.mkdir()
        yield staging
        with _locked(out.parent):
            check_output(out, inputs=inputs, force=force)  # another writer may have created it meanwhile
            if out.exists() or out.is_symlink():
                previous = claim / PREVIOUS_NAME
                os.replace(out, previous)
                try:
                    os.replace(staging, out)
                except BaseException:
                    os.replace(previous, out)
                    raise
            else:
                os.replace(staging, out)
    finally:
        try:
            shutil.rmtree(claim, ignore_errors=True)
        finally:
            os.close(claim_fd)


@contextlib.contextmanager
def claim_folder(folder: PathLike, *, inputs: Iterable[PathLike] = ()) -> Iterator[Path]:
    """Hold ``folder`` (created if missing; never one that overlaps ``inputs``) for a run that writes into
    it over time, such as training with its checkpoints: while this one lives, a second run into the same
    folder is refused. The claim is an ``flock`` on the hidden file :data:`RUN_CLAIM` inside it; the first
    process of a launched (DDP) run holds it for all of them.
    """
    folder = check_output(folder, inputs=inputs, force=True, create_parents=True)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    if int(os.environ.get("RANK", "0")) != 0:
        yield folder
        return
    claim = folder / RUN_CLAIM
    fd = os.open(claim, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            _flock(fd, wait=False)
        except BlockingIOError:
            raise ValueError(f"another process is writing {folder} right now; try again later") from None
        try:
            yield folder
        finally:
            claim.unlink(missing_ok=True)  # still locked: a writer that opened it before sees it gone next time
            if created and not any(folder.iterdir()):  # the run wrote nothing: leave nothing
                folder.rmdir()
    finally:
        os.close(fd)


def clear_folder(folder: Path) -> None:
    """Remove everything in a claimed ``folder`` but its claim (``--force`` on a run's output)."""
    for child in folder.iterdir():
        if child.name == RUN_CLAIM:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def write_file(path: PathLike, text: str, *, protected: Iterable[PathLike] = ()) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically: a claimed temporary file beside it, then a rename
    (an existing file is replaced; claims follow :func:`output_folder`'s rules).

    Refuses a ``path`` that is a folder or equals one of the ``protected`` files (e.g. a model's own
    ``config.json``); creates missing parent folders.
    """
    path = Path(path)
    target = path.resolve()
    for keep in protected:
        if target == Path(keep).resolve():
            raise ValueError(f"output {path} would overwrite {keep}; choose another file name")
    if path.is_dir():
        raise ValueError(f"output {path} is a folder; name a file")
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path.parent):
        _settle_claims(path)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_claim_prefix(path))
        _flock(fd, wait=False)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:  # closing the file drops the claim
            f.write(text)
            f.flush()
            os.chmod(tmp, 0o666 & ~_umask())
            os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
