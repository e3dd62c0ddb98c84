"""Files written safely: atomic writes (a temporary name beside the target, then one rename),
the writer lock on an output path, the checks of an output target before a run starts, and the
signals and process ids that keep a killed writer from leaving debris.

Temporary folders are named `.NAME.PID.XXXX.tmp` beside NAME: SIGTERM and SIGINT remove them
(SIGTERM is turned into SystemExit(143) so that cleanup runs), and the next write of NAME removes
those whose writer process is gone (killed with SIGKILL, or the machine went down).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import fnmatch
import os
import re
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from recone_lite.errors import InputError, ReconeError
from recone_lite.log import warn

WRITER_LOCK = ".recone-writer.lock"  # held inside a temporary folder while its writer lives
REPLACED = ".recone-replaced"  # a folder being replaced waits here until the new one is in place
STALE_AFTER_S = 60.0  # a temporary folder without a writer lock is stale after this long


def _sigterm(signum: int, frame: Any) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM kills at once
    raise SystemExit(128 + signum)


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit(143) in this process, so that `finally` blocks run and
    remove temporary files (SIGINT already raises KeyboardInterrupt). Only from the main thread
    and only where nobody else handles SIGTERM."""
    if threading.current_thread() is threading.main_thread() and (
        signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    ):
        signal.signal(signal.SIGTERM, _sigterm)


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (on this machine).

    >>> pid_alive(os.getpid()), pid_alive(0)
    (True, False)
    """
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_TEMPORARY = re.compile(r"\.(.+)\.\d+\..*\.tmp")  # atomic_path's `.NAME.PID.XXXX.tmp` of NAME


def writer_pid(name: str, final_name: str) -> int | None:
    """The writer's pid in a temporary name `.FINAL.PID.XXXX.tmp`, else None.

    >>> writer_pid(".train.jsonl.4242.k2j_x9.tmp", "train.jsonl")
    4242
    >>> writer_pid(".train.jsonl.k2j_x9ab.tmp", "train.jsonl") is None  # an older name: no pid
    True
    """
    head = name.removeprefix(f".{final_name}.").split(".", 1)[0]
    return int(head) if head.isdigit() and name != head else None


def _locked_by_someone(lock: Path) -> bool:
    try:
        fd = os.open(lock, os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # closing drops a lock taken here
    return False


def remove_stale(final: str | Path) -> list[Path]:
    """Remove the temporary folders of `final` that killed writers left (`.NAME.PID.XXXX.tmp`
    whose writer lock nobody holds); return them. A live writer's folder is left alone."""
    import glob

    final = Path(final)
    removed = []
    for folder in final.parent.glob(f".{glob.escape(final.name)}.*.tmp"):
        pid = writer_pid(folder.name, final.name)
        if pid is None or not folder.is_dir() or folder.is_symlink():
            continue
        lock = folder / WRITER_LOCK
        if lock.is_file():
            stale = not _locked_by_someone(lock)
        else:  # killed between creating the folder and its lock
            try:
                age = time.time() - folder.stat().st_mtime
            except FileNotFoundError:
                continue
            stale = not pid_alive(pid) and age > STALE_AFTER_S
        if stale and (folder / REPLACED).is_dir():  # killed between its two renames
            if final.exists() or final.is_symlink():
                warn(f"{folder / REPLACED} holds what {final} held before a killed write; "
                     "it is left for you to move back or remove")
                continue
            os.replace(folder / REPLACED, final)
            warn(f"{final}: put back what a killed write had moved aside")
        if stale:
            shutil.rmtree(folder, ignore_errors=True)
            warn(f"removed {folder}, left behind by a killed run (pid {pid})")
            removed.append(folder)
    return removed


def _hold(lock: Path) -> int:
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)  # our own new file: never contended
    return fd


def holds_cwd(path: str | Path) -> bool:
    """Whether `path` is the current folder or one of its parents (replacing it would pull the
    ground from under the shell).

    >>> holds_cwd("."), holds_cwd(".."), holds_cwd("no-such-folder")
    (True, True, False)
    """
    here, there = Path.cwd().resolve(), Path(path).resolve()
    return here == there or there in here.parents


Markers = str | tuple[str, ...]
Layout = tuple[str, ...]  # fnmatch patterns: every entry a command writes in its own folder


def _names(marker: Markers) -> tuple[str, ...]:
    return (marker,) if isinstance(marker, str) else tuple(marker)


def foreign_entry(out: Path, layout: Layout) -> str | None:
    """The first entry of the folder `out` (by name) that no pattern of `layout` matches: what
    the command never writes there, so what a replacement would delete although the user owns
    it. None when every entry is the command's own.

    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> _ = (root / "report.html").write_text("x"); _ = (root / "loss.png").write_text("x")
    >>> foreign_entry(root, ("report.html", "*.png")) is None
    True
    >>> _ = (root / ".report.html.77.ab1.tmp").write_text("")  # an atomic write of its own
    >>> foreign_entry(root, ("report.html", "*.png")) is None
    True
    >>> _ = (root / "notes.txt").write_text("mine")
    >>> foreign_entry(root, ("report.html", "*.png"))
    'notes.txt'
    """
    for name in sorted(os.listdir(out)):
        temporary = _TEMPORARY.fullmatch(name)
        own = temporary.group(1) if temporary else name
        if not any(fnmatch.fnmatchcase(own, pattern) for pattern in layout):
            return name
    return None


def lies_inside(path: str | Path, folder: str | Path) -> bool:
    """Whether `path` is `folder` or lies under it, by its absolute path or by its resolved one
    (so a symlinked input counts where either spelling puts it).

    >>> lies_inside("data/u.data", "data"), lies_inside("data", "data"), lies_inside("d2/x", "d")
    (True, True, False)
    """
    path, folder = Path(path).expanduser(), Path(folder).expanduser()
    for a, b in ((Path(os.path.abspath(path)), Path(os.path.abspath(folder))),
                 (path.resolve(), folder.resolve())):
        if a == b or b in a.parents:
            return True
    return False


def first_inside(out: str | Path, inputs: Iterable[tuple[str | Path | None, str]]
                 ) -> tuple[str | Path, str] | None:
    """The first input (path, its flag) that lies inside `out`, or None; None and empty paths
    are skipped.

    >>> first_inside("data", [(None, "--meta"), ("u.item", "--reviews"), ("data/u.data", "--x")])
    ('data/u.data', '--x')
    """
    for given, given_flag in inputs:
        if given is not None and str(given) != "" and lies_inside(given, out):
            return given, given_flag
    return None


def check_inputs_outside(out: str | Path, inputs: Iterable[tuple[str | Path | None, str]],
                         flag: str = "--out") -> None:
    """InputError (exit 2) naming the first input (path, its flag) that lies inside `out`:
    replacing `out` would delete what the command reads. None inputs are skipped."""
    found = first_inside(out, inputs)
    if found is not None:
        raise InputError(f"lies inside {flag} {out}, which this command replaces; move it "
                         f"or choose another {flag}", path=found[0], field=found[1])


def folder_problem(out: Path, marker: Markers | None, layout: Layout | None = None) -> str | None:
    """Why the existing folder `out` may not be replaced, or None: it is (or holds) the current
    folder, no `marker` is named (a file is written there), it holds files and none of the
    markers (the files that prove it is ours), or (`layout` given) it holds an entry the command
    never writes (a user's file, which replacing the folder would delete). The one rule behind
    `check_target` and `atomic_path`."""
    if holds_cwd(out):
        return "is the current folder or holds it; it is never replaced"
    if marker is None:
        return "is a folder; a file is written here, so give a file name"
    names = _names(marker)
    if any(out.iterdir()) and not any((out / name).is_file() for name in names):
        return f"holds files and no {' or '.join(names)}"
    foreign = foreign_entry(out, layout) if layout is not None else None
    if foreign is not None:
        return f"holds {foreign}, which this command does not write"
    return None


def check_target(out: str | Path, *, overwrite: bool, marker: Markers | None = None,
                 what: str = "", flag: str = "--out", layout: Layout | None = None) -> None:
    """The one check of a path a command is about to write, before any work: a file target
    (`marker` None) must not be a folder; an existing folder target is replaced only with
    `overwrite` and when it is empty or holds `marker` (manifest.json, run.json, recone.json,
    report.html) and, where `layout` is given, nothing but the entries it names (the command's
    own); `.` and the folders holding it never are. InputError (exit 2) names `flag`.

    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> _ = (root / "notes.txt").write_text("mine")
    >>> check_target(root, overwrite=True, marker="manifest.json",
    ...              what="prepared data folder")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    recone_lite.errors.InputError: ...: --out: holds files and no manifest.json, so it is not a ...
    >>> check_target(root, overwrite=True)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    recone_lite.errors.InputError: ...: --out: is a folder; a file is written here, so give a ...
    >>> _ = (root / "manifest.json").write_text("{}")
    >>> check_target(root, overwrite=True, marker="manifest.json", what="prepared data folder",
    ...              layout=("manifest.json", "*.jsonl"))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    recone_lite.errors.InputError: ...: --out: holds notes.txt, which this command does not ...
    """
    out = Path(out)
    if not out.exists() and not out.is_symlink():
        if out.parent.exists() and not out.parent.is_dir():
            raise InputError(f"{out.parent} is a file, not a folder", path=out, field=flag)
        return
    if marker is None:
        if out.is_dir():
            raise InputError(folder_problem(out, None) or "is a folder", path=out, field=flag)
        return  # a file is replaced, as before (each command says when it refuses one)
    if not out.is_dir():
        raise InputError("exists and is not a folder", path=out, field=flag)
    problem = folder_problem(out, marker, layout)
    if problem is not None and problem.startswith("holds files"):
        problem += (f", so it is not a {what}; --overwrite replaces only that: choose another "
                    f"{flag}")
    elif problem is not None and problem.startswith("holds "):
        problem += (f" (recone-lite replaces only a {what} and never deletes your files): "
                    f"move it away or choose another {flag}")
    elif problem is not None:
        problem += f": choose another {flag}"
    elif not overwrite:
        problem = "already exists; pass --overwrite to replace it"
    if problem is not None:
        raise InputError(problem, path=out, field=flag)


def check_replaceable(out: str | Path, *, overwrite: bool, marker: Markers, what: str,
                      flag: str = "--out", layout: Layout | None = None) -> None:
    """`check_target` for a folder target (kept for its callers)."""
    check_target(out, overwrite=overwrite, marker=marker, what=what, flag=flag, layout=layout)


@contextlib.contextmanager
def atomic_path(final: str | Path, *, marker: Markers | None = None,
                layout: Layout | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `final`; rename it to `final` only if the block succeeds.

    Works for a file or a directory written at the yielded path. A directory already at `final`
    is replaced only when `marker` names the file that proves it ours and `folder_problem` finds
    nothing against it (with `layout`: no entry the command does not write), checked before the
    block and again at the rename (InputError then, and nothing is touched); it is moved aside,
    put back if the rename fails (or by the next write when the process was killed in between),
    and removed once the new one is in place. Nothing
    is left under the final name when the block raises; the temporary folder
    `.NAME.PID.XXXX.tmp` is removed then, on SIGTERM and SIGINT too, and by the next write of
    `final` if the process was killed outright.

    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> with atomic_path(root / "a.txt") as tmp:
    ...     _ = tmp.write_text("new")
    >>> (root / "a.txt").read_text(), [p.name for p in root.iterdir()]
    ('new', ['a.txt'])
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    exit_on_sigterm()
    remove_stale(final)
    _check_replace(final, marker, layout)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.{os.getpid()}.", suffix=".tmp",
                                dir=final.parent))
    try:
        held = _hold(tmp / WRITER_LOCK)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    target = tmp / final.name
    try:
        yield target
        if _check_replace(final, marker, layout):
            old = tmp / REPLACED
            os.replace(final, old)
            try:
                os.replace(target, final)
            except BaseException:
                os.replace(old, final)
                raise
        else:
            os.replace(target, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        os.close(held)


def _check_replace(final: Path, marker: Markers | None, layout: Layout | None = None) -> bool:
    """Whether `final` is a folder to move aside (InputError when it may not be replaced)."""
    if not final.is_dir() or final.is_symlink():
        return False
    problem = folder_problem(final, marker, layout)
    if problem is not None:
        raise InputError(f"{problem}; nothing was written", path=final)
    return True


@contextlib.contextmanager
def writer_lock(out: str | Path, flag: str = "--out") -> Iterator[None]:
    """Hold the lock `.NAME.lock` beside `out` for the block (fcntl.flock, released when the
    process dies); a second writer of the same `out` is refused (ReconeError, exit 1) instead of
    both writing. The lock file is removed on release.

    >>> import tempfile
    >>> out = Path(tempfile.mkdtemp()) / "run"
    >>> with writer_lock(out):  # doctest: +ELLIPSIS
    ...     with writer_lock(out):
    ...         pass
    Traceback (most recent call last):
    ...
    recone_lite.errors.ReconeError: ...run: another process (pid ...) is writing this --out; ...
    >>> list(out.parent.iterdir())
    []
    """
    out = Path(os.path.abspath(out))
    lock = out.parent / f".{out.name}.lock"
    out.parent.mkdir(parents=True, exist_ok=True)
    exit_on_sigterm()
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = os.read(fd, 32).decode("ascii", "replace").strip() or "?"
            os.close(fd)
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise ReconeError(f"{out}: another process (pid {holder}) is writing this {flag}; "
                              f"wait for it to end or choose another {flag}") from None
        try:  # the holder before us may have removed the file between our open and our lock
            same = os.path.samestat(os.fstat(fd), os.stat(lock))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock)
        os.close(fd)
