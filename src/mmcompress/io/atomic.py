"""Write an output folder atomically: build it beside the target, rename at the end."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import UserError


def _beside(out: Path, what: str) -> str:
    """Prefix of a hidden temporary name beside `out` (its name cut short, so that a long but
    legal name stays legal with the suffix)."""
    name = os.fsencode(out.name)[:100].decode(errors="ignore")  # bytes are what is limited
    return f".{name}.{what}-"


def check_output_dir(out: Path, overwrite: bool, reads: tuple[Path, ...] = ()) -> None:
    """Refuse to replace a non-empty folder unless asked to, the folder the command runs in
    (or one holding it), a model or data path the run `reads` (or a folder holding it), and a
    path that cannot be written (checked before any work)."""
    out = Path(out)
    try:
        here, target = Path.cwd().resolve(), out.resolve()
        if target in (here, *here.parents):
            raise UserError(f"--out {out} is the folder this command runs in, or holds it; "
                            "name a folder to create")
        for source in map(Path, reads):
            source = source.resolve()
            if target == source or target in source.parents:
                raise UserError(f"--out {out} is or holds {source}, which this run reads: "
                                "name another folder")
        if out.is_symlink() and not out.exists():
            raise UserError(f"--out {out} is a link to a path that does not exist")
        if out.exists() and not out.is_dir():
            raise UserError(f"--out {out} exists and is not a folder")
        if out.is_dir() and any(out.iterdir()) and not overwrite:
            raise UserError(
                f"--out {out} exists and is not empty; choose another folder or pass "
                "--overwrite")
        parent = out.absolute().parent
        while not parent.exists():  # the folders --out needs are made in the first that exists
            parent = parent.parent
    except OSError as exc:  # a name too long, a folder we may not list
        raise UserError(f"--out {out}: {exc.strerror}") from None
    if not parent.is_dir():
        raise UserError(f"--out {out}: {parent} is a file, not a folder")
    try:  # the output is written next to --out and renamed: that needs a writable folder
        os.rmdir(tempfile.mkdtemp(prefix=_beside(out, "probe"), dir=parent))
    except OSError as exc:
        raise UserError(f"--out {out}: cannot write in {parent} ({exc.strerror})") from None


@contextmanager
def atomic_folder(out: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder that becomes `out` only if the block finishes without error
    (else the folders made to hold it are removed too). A link `out` keeps pointing where it
    did: the folder it points to is the one replaced."""
    out = Path(out)
    check_output_dir(out, overwrite)
    if out.is_symlink():
        out = out.resolve()
    made = _missing_parents(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = False
    tmp = Path(tempfile.mkdtemp(prefix=_beside(out, "tmp"), dir=out.parent))
    try:
        yield tmp
        share_as_created(tmp)
        _put_in_place(tmp, out, overwrite)
        done = True
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        if not done:
            for folder in made:  # deepest first; one that something else filled stays
                try:
                    folder.rmdir()
                except OSError:
                    break


def _put_in_place(tmp: Path, out: Path, overwrite: bool) -> None:
    """Rename the finished `tmp` to `out`. Without `overwrite`, a folder that another run filled
    at `out` meanwhile is never replaced (POSIX rename replaces only an empty one). With it,
    the previous output is moved into a fresh folder aside first and removed after; if the
    rename fails or is interrupted, it comes back (or, when another run's output took its
    place, goes)."""
    aside: Path | None = None
    try:
        if overwrite and out.exists():
            aside = Path(tempfile.mkdtemp(prefix=_beside(out, "old"), dir=out.parent))
            os.replace(out, aside / "previous")
        os.rename(tmp, out)
    except BaseException as exc:  # an interrupt between the two renames too
        if aside is not None:  # when another run's output is there now, it stays
            with contextlib.suppress(OSError):
                os.replace(aside / "previous", out)
        if not isinstance(exc, OSError):
            raise
        clash = exc.errno in (errno.EEXIST, errno.ENOTEMPTY)
        raise UserError(f"--out {out}: " + ("another run wrote it meanwhile; its output was "
                                            "kept and this run's discarded" if clash
                                            else exc.strerror)) from None
    finally:
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)


def _missing_parents(out: Path) -> list[Path]:
    """The folders above `out` that do not exist yet, deepest first."""
    missing, parent = [], out.absolute().parent
    while not parent.exists():
        missing.append(parent)
        parent = parent.parent
    return missing


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def share_as_created(path: Path) -> None:
    """Give `path` (and, for a folder, everything in it) the permissions a plain open or mkdir
    would: temporary folders and files are private to their owner (0700, 0600, and
    safetensors writes 0600 too), which would keep other users from reading the output."""
    mask = _umask()
    path = Path(path)
    items = [path, *path.rglob("*")] if path.is_dir() else [path]
    for item in items:
        if not item.is_symlink():  # a link's target is not ours to change
            os.chmod(item, (0o777 if item.is_dir() else 0o666) & ~mask)


def write_file_atomic(path: Path, write: Callable[[Path], object]) -> None:
    """Have `write` fill a temporary file beside `path`, then rename it to `path`: a reader
    sees the old file or the whole new one, and a failure leaves no temporary behind."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        write(Path(tmp))
        share_as_created(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    """Write a UTF-8 text file via a temporary file and rename."""
    write_file_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
