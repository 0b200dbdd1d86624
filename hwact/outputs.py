"""Output rules, in one place: how every command writes its output folder (or file).

* Checked before any work (`check_output`): an existing output is refused unless --force; a symbolic
  link is never written through or replaced (--force does not follow links: pass the real path); --force
  never deletes the current folder or an input of the run (the model, calibration or training data), so
  an output that is, or holds, one of them is refused; the parent folder must be creatable and writable
  and the name must fit in the file system, with room for hwact's temporary name.
* Built in a temporary sibling `.NAME.tmp-PID-XXXXXXXX` and renamed into place when complete
  (`atomic_dir`, `atomic_file`). On an error, Ctrl-C or SIGTERM (the CLI turns it into an exception)
  the temporary is removed; one left by a killed process (SIGKILL, power loss) is removed by the next
  run writing the same output, once no process with that PID is alive on this machine.
* The final rename never replaces an output: without --force it is renameat2(RENAME_NOREPLACE), so of
  two runs racing to one output the second fails instead of replacing the first's; with --force the new
  output is swapped in atomically (RENAME_EXCHANGE) and the old one deleted afterwards. Where renameat2
  is missing (not Linux, or a file system without it), files are linked into place (link(2) never
  replaces) and folders renamed (rename(2) never replaces a non-empty folder, and outputs are never empty).
* An OSError while writing (disk full, read-only file system, name too long, ...) becomes an InputError
  naming the output and the cause (`output_error`), never the temporary that no longer exists.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import os
import shutil
import sys
import tempfile
from pathlib import Path

from hwact.errors import HwactError, InputError

# causes of a failed read or write that lie with the machine or the paths the user chose, not with hwact
ENVIRONMENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM,
                                errno.ENAMETOOLONG, errno.ENOTDIR, errno.EISDIR})
_WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS})   # only writing fails so
_HINTS = {errno.ENOSPC: "free some disk space or write elsewhere", errno.EDQUOT: "free some disk space or write elsewhere",
          errno.EROFS: "write to a writable location", errno.EACCES: "write to a folder you may write to",
          errno.EPERM: "write to a folder you may write to", errno.ENAMETOOLONG: "use a shorter name",
          errno.ENOTDIR: "a part of the path is a file, not a folder"}
_RENAME_NOREPLACE, _RENAME_EXCHANGE, _AT_FDCWD = 1, 2, -100
_RANDOM = 8   # length of tempfile's random part


def output_error(path, exc: OSError, member: str | None = None) -> InputError:
    """The one-line error for an OSError met while writing the output `path` (`member`: a file inside it)."""
    what = f"cannot write {member}" if member else "cannot write"
    return InputError(f"{path}: {what} ({exc.strerror or type(exc).__name__})", hint=_HINTS.get(exc.errno))


def os_error(exc: OSError) -> InputError | None:
    """The one-line error for an OSError caused by the machine or a path the user chose; None for others."""
    if exc.errno not in ENVIRONMENT_ERRNOS:
        return None
    where = f"{os.fsdecode(exc.filename)}: " if exc.filename is not None else ""
    return InputError(f"{where}{exc.strerror or type(exc).__name__}", hint=_HINTS.get(exc.errno))


def check_output(path, force: bool, inputs=(), kind: str = "folder") -> Path:
    """Refuse, before any work, an output this run must not write (see the module docstring).

    `inputs` are the paths (or names, like zoo:x, that are not paths) the run reads; `kind` is "folder"
    or "file". Returns the output as an absolute path."""
    try:
        return _check_output(path, force, inputs, kind)
    except OSError as exc:   # a name too long even to look up, say
        raise output_error(path, exc) from exc


def _check_output(shown, force: bool, inputs, kind: str) -> Path:
    path = Path(os.path.abspath(shown))
    if not path.name:
        raise InputError(f"{shown}: is the root folder", hint="write the output elsewhere")
    if path.is_symlink():
        raise InputError(f"{shown}: is a symbolic link (to {os.readlink(path)}); hwact writes no output through "
                         "a link and --force does not replace one", hint="pass the real path, or remove the link")
    if os.path.lexists(path):
        real = os.path.realpath(path)
        for name, held in [("the current folder", Path.cwd()), *((f"the input {i}", i) for i in inputs if i)]:
            if os.path.exists(held) and os.path.commonpath([real, os.path.realpath(held)]) == real:
                raise InputError(f"{shown}: replacing it would delete {name}", hint="write the output elsewhere")
        if not force:
            raise InputError(f"{shown}: already exists", hint="pass --force to replace it")
        if path.is_dir() != (kind == "folder"):
            raise InputError(f"{shown}: is a {'folder' if path.is_dir() else 'file'}; --force replaces only a {kind}")
    _check_parent(path, shown)
    return path


def _check_parent(path: Path, shown) -> None:
    """The parent folder can be made and written, and every new name fits (probed with a folder removed at once)."""
    folder, missing = path.parent, []
    while not os.path.lexists(folder):
        missing.append(folder.name)
        folder = folder.parent
    if not folder.is_dir():
        raise InputError(f"{shown}: {folder} is not a folder", hint=_HINTS[errno.ENOTDIR])
    try:
        name_max, path_max = os.pathconf(folder, "PC_NAME_MAX"), os.pathconf(folder, "PC_PATH_MAX")
    except (OSError, ValueError):
        name_max, path_max = 255, 4096
    room = len(_temp_prefix(path)) - len(path.name) + _RANDOM   # what the temporary name adds
    too_long = [f"'{name[:16]}...' has {len(os.fsencode(name))} bytes, at most {name_max} here"
                for name in missing if len(os.fsencode(name)) > name_max]
    if len(os.fsencode(path.name)) + room > name_max:
        too_long.append(f"'{path.name[:16]}...' has {len(os.fsencode(path.name))} bytes, at most {name_max - room} "
                        f"here, as hwact adds {room} for its temporary name")
    if len(os.fsencode(str(path))) + room >= path_max:
        too_long.append(f"the whole path has {len(os.fsencode(str(path)))} bytes, at most {path_max - room - 1} here")
    if too_long:
        raise InputError(f"{shown}: file name too long ({too_long[0]})", hint=_HINTS[errno.ENAMETOOLONG])
    try:   # the real test: make (and remove) a folder named like the temporary where the first new name goes
        os.rmdir(tempfile.mkdtemp(dir=folder, prefix=_temp_prefix(path)))
    except OSError as exc:
        raise output_error(shown, exc) from exc


@contextlib.contextmanager
def atomic_dir(path, force: bool, inputs=()):
    """Yield a temporary folder; when the block ends without error it becomes `path`, else it vanishes."""
    with _staged(path, force, inputs, "folder") as tmp:
        yield tmp


@contextlib.contextmanager
def atomic_file(path, force: bool, inputs=()):
    """Yield a temporary file name; when the block ends without error the file becomes `path`."""
    with _staged(path, force, inputs, "file") as tmp:
        yield tmp / Path(path).name


@contextlib.contextmanager
def _staged(shown, force: bool, inputs, kind: str):
    path = check_output(shown, force, inputs, kind)
    remove_stale(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=_temp_prefix(path)))
    except OSError as exc:
        raise output_error(shown, exc) from exc
    try:
        try:
            yield tmp
        except Exception as exc:
            error = _write_error(shown, exc, tmp, kind)
            if error is None:
                raise
            raise error from exc
        if kind == "folder":
            tmp.chmod(0o755)
        try:
            _commit(tmp if kind == "folder" else tmp / path.name, path, force, shown)
        except OSError as exc:
            raise output_error(shown, exc) from exc
    finally:
        _remove(tmp)


def _commit(source: Path, path: Path, force: bool, shown) -> None:
    """Rename the finished `source` to `path`; an output there is replaced only with `force`."""
    if force and os.path.lexists(path):
        if path.is_symlink():
            raise InputError(f"{shown}: became a symbolic link while this run was writing it")
        try:
            swapped = _renameat2(source, path, _RENAME_EXCHANGE)
        except FileNotFoundError:   # removed meanwhile: the plain rename below
            swapped = None
        if swapped:
            _remove(source)   # now the old output
            return
        if swapped is False:   # no renameat2: move the old output aside (as a temporary), then rename
            aside = Path(tempfile.mkdtemp(dir=path.parent, prefix=_temp_prefix(path)))
            os.rename(path, aside / "old")
            try:
                os.rename(source, path)
            except OSError:
                os.rename(aside / "old", path)   # put the old output back
                raise
            finally:
                _remove(aside)
            return
    try:
        if not _renameat2(source, path, _RENAME_NOREPLACE):
            _rename_no_replace(source, path)
    except OSError as exc:
        if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR):
            raise
        raise InputError(f"{shown}: appeared while this run was writing it (another run?)",
                         hint="pass --force to replace it, or write elsewhere") from exc


def _rename_no_replace(source: Path, path: Path) -> None:
    """Without renameat2: link(2) fails on an existing name; rename(2) of a folder fails on a non-empty one."""
    if os.path.lexists(path):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(path))
    if source.is_dir():
        os.rename(source, path)
        return
    try:
        os.link(source, path)
    except FileExistsError:
        raise
    except OSError:   # no hard links on this file system: only the check above guards the name
        os.rename(source, path)
    else:
        source.unlink()


@functools.cache
def _libc_renameat2():
    if not sys.platform.startswith("linux"):
        return None
    try:
        func = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):   # a C library without it (glibc < 2.28, some musl)
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    func.restype = ctypes.c_int
    return func


def _renameat2(source: Path, path: Path, flags: int) -> bool:
    """renameat2(2) with `flags`; False where the C library, kernel or file system does not offer it."""
    func = _libc_renameat2()
    if func is None:
        return False
    if func(_AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(path), flags) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL):   # EINVAL: this file system does not support the flag
        return False
    raise OSError(code, os.strerror(code), str(source), None, str(path))


def _temp_prefix(path: Path) -> str:
    return f".{path.name}.tmp-{os.getpid()}-"


def remove_stale(path: Path) -> list[Path]:
    """Remove temporaries of `path` (`.NAME.tmp-PID-XXXXXXXX`) whose process is gone; return them."""
    prefix, removed = f".{path.name}.tmp-", []
    with contextlib.suppress(OSError):
        for entry in os.listdir(path.parent):
            pid, dash, rest = entry[len(prefix):].partition("-")
            if (entry.startswith(prefix) and pid.isdigit() and dash and len(rest) == _RANDOM
                    and not _alive(int(pid))):
                _remove(path.parent / entry)
                removed.append(path.parent / entry)
    return removed


def _alive(pid: int) -> bool:
    """Whether a process `pid` exists here (when unsure, yes: its temporary is kept)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):   # EPERM: alive, another user's
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _member(exc: OSError, tmp: Path) -> str | None:
    """The name, inside the output, of the file an OSError was about (None: not one of ours)."""
    for name in (exc.filename, exc.filename2):
        if name is None:
            continue
        name = os.path.abspath(os.fsdecode(name))
        if name != str(tmp) and os.path.commonpath([name, str(tmp)]) == str(tmp):
            return os.path.relpath(name, tmp)
    return None


def _write_error(shown, exc: Exception, tmp: Path, kind: str) -> InputError | None:
    """The error to show for `exc`, raised while writing into `tmp`, when writing caused it; else None.

    Writing caused it when it is an OSError about a file in `tmp` or of a kind only writing raises, a
    short write (numpy's tofile, used by the ONNX writer, says "N requested and M written", without errno),
    or any error while the disk is full (torch.save reports a full disk as a RuntimeError)."""
    if isinstance(exc, HwactError):
        return None
    if isinstance(exc, OSError):
        member = _member(exc, tmp)
        if member is not None or exc.errno in _WRITE_ERRNOS:
            return output_error(shown, exc, member if kind == "folder" else None)
        if exc.errno is None and "requested and" in str(exc) and str(exc).endswith("written"):
            return InputError(f"{shown}: cannot write (a write came up short, {exc}: is the disk full?)",
                              hint=_HINTS[errno.ENOSPC])
    if _disk_full(tmp):
        return output_error(shown, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    return None


def _disk_full(folder: Path) -> bool:
    try:
        return os.statvfs(folder).f_bavail == 0
    except OSError:
        return False
