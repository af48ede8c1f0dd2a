"""Reading user files with errors that name them, and writing files that are never half-written."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import stat
import tempfile
import unicodedata
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

import yaml
from pydantic import BaseModel, ValidationError

from evalkit.errors import EvalkitError, first_line

# Ids of scenes, suites, items, plans and named stacks: they name folders and files, so nothing
# that could leave the folder they are written in (no '/', no '..', no leading dot), and short
# enough for any file system.
ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
# Written into every folder evalkit writes whole: only such a folder is ever replaced. (A file
# evalkit also writes, such as evalkit.json, is no mark: a user's folder may hold one.)
MARK = ".evalkit"
_MARK_TEXT = "written whole by evalkit"  # its first line, then ": <kind>" (what was written)
_MARK_LIST = "entries:"  # then one JSON string per line: every file and folder evalkit wrote there


# Characters that show nothing: text made only of these (and spaces) is empty.
INVISIBLE = "\u200b\u200c\u200d\u2060\ufeff\u00ad"


def visible(text: str) -> str:
    """`text` without its surrounding spaces and invisible characters: what a reader would see."""
    return text.strip().strip(INVISIBLE).strip()


def seen_as(text: str) -> str:
    """What a reader sees: one Unicode form, no invisible characters, no spaces at the end (which
    nothing shows). Two texts seen alike are one text to a reader and two to a tokenizer. Leading
    spaces, line breaks and indentation are seen, and kept."""
    return unicodedata.normalize("NFC", text.translate({ord(c): None for c in INVISIBLE})).rstrip()


def not_blank(text: str) -> str:
    """A pydantic validator: text that shows nothing (spaces, zero-width characters) is empty."""
    if not visible(text):
        raise ValueError("is empty (only spaces or invisible characters)")
    return text


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error, not a
    silent overwrite (a second `text:` in a scene would be the one trained), a key must be a plain
    value and not a yes/no read as true/false, a date-like value stays text (`2024-02-30` is a
    string, not a failed date), and `5e-2` is a number as in YAML 1.2 (1.1 wants `5.0e-2`)."""


_MERGE = "tag:yaml.org,2002:merge"


def _unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen = set()
    for key_node, _ in node.value:
        if key_node.tag == _MERGE:  # `<<: *defaults`: merged below, and overridden by the keys given here
            continue
        key = loader.construct_object(key_node, deep=deep)
        if not isinstance(key, (str, int, float, bool, type(None))):
            raise yaml.constructor.ConstructorError(None, None, f"a key must be a plain value, not a "
                                                    f"{type(key).__name__}", key_node.start_mark)
        if isinstance(key, bool) and key_node.value.lower() not in ("true", "false"):
            raise yaml.constructor.ConstructorError(None, None, f"key '{key_node.value}' reads as {str(key).lower()} "
                                                    "in YAML; quote it to mean the word", key_node.start_mark)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"key '{key}' is given twice", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)
_UniqueKeyLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_UniqueKeyLoader.add_implicit_resolver("tag:yaml.org,2002:float",
                                       re.compile(r"^[-+]?[0-9]+(\.[0-9]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))


def read_text(path: Path) -> str:
    """A UTF-8 text file's contents; unreadable or not text is one line naming it."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise EvalkitError("not a UTF-8 text file", where=str(path)) from None
    except OSError as exc:
        raise EvalkitError(f"cannot read: {exc.strerror or exc}", where=str(path)) from None


def read_yaml_mapping(path: Path) -> dict[str, Any]:
    """Parse a YAML file that must hold one mapping."""
    if not path.exists():
        raise EvalkitError("no such file", where=str(path))
    if not path.is_file():
        raise EvalkitError("not a file", where=str(path))
    text = read_text(path)
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise EvalkitError(f"not valid YAML{at}: {getattr(exc, 'problem', exc)}", where=str(path)) from None
    except RecursionError:
        raise EvalkitError("not valid YAML: nested too deeply", where=str(path)) from None
    except (ValueError, OverflowError, TypeError) as exc:  # a tagged value its type refuses (`!!float hi`)
        raise EvalkitError(f"not valid YAML: {first_line(exc)}", where=str(path)) from None
    if not isinstance(data, dict):
        raise EvalkitError(f"expected a YAML mapping at the top, found {type(data).__name__}", where=str(path))
    _check_values(data, path)
    return data


# Values a YAML input may hold with its aliases expanded. An alias is one reference when loaded,
# but everything after (templates, hashing, validation) walks it whole: ten nested aliases of ten
# make 10^10 values from a dozen lines.
MAX_YAML_VALUES = 2_000_000
MAX_YAML_CHARACTERS = 20_000_000  # and characters: one long string aliased 25,000 times is 10 GB of text


def _check_values(data: Any, path: Path) -> None:
    """One walk over the parsed file, each alias as often as it is used: refused past
    MAX_YAML_VALUES values or MAX_YAML_CHARACTERS characters, or at a string (key or value) that
    is no text - YAML's "\\ud800" escape makes one, and a tokenizer would refuse it far from the file."""
    stack, seen, characters = [data], 0, 0
    while stack:
        value = stack.pop()
        seen += 1
        if seen > MAX_YAML_VALUES:
            raise EvalkitError(f"holds more than {MAX_YAML_VALUES:,} values once its aliases are expanded",
                               where=str(path))
        if isinstance(value, dict):
            stack.extend(value.keys())
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
        elif isinstance(value, str):
            characters += len(value)
            if characters > MAX_YAML_CHARACTERS:
                raise EvalkitError(f"holds more than {MAX_YAML_CHARACTERS:,} characters once its aliases are "
                                   "expanded", where=str(path))
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise EvalkitError(f"not valid YAML: {value[:40]!r} holds a lone surrogate escape, which is no "
                                   "character", where=str(path)) from None


def read_json(path: Path) -> Any:
    """Parse a JSON file; unreadable, not text or not JSON is one line naming it."""
    text = read_text(path)
    try:
        return json.loads(text)
    except RecursionError:
        raise EvalkitError("not valid JSON: nested too deeply", where=str(path)) from None
    except ValueError as exc:
        raise EvalkitError(f"not valid JSON: {first_line(exc)}", where=str(path)) from None


def validation_error(path: Path, exc: ValidationError, item: str | None = None, skip: int = 0) -> EvalkitError:
    """Turn pydantic's first error into one line: file, item, field, what is wrong.

    `skip` drops leading parts of the error's location (e.g. the list index of an item
    that `item` already names).
    """
    err = exc.errors()[0]
    field = ".".join(str(p) for p in err["loc"][skip:])
    text = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        message = f"unknown field '{field}'"
    elif err["type"] == "missing":
        message = f"field '{field}' is required"
    else:
        message = f"field '{field}': {text}" if field else text
    if err["type"] == "string_type" and isinstance(err.get("input"), bool):  # yes, no, on, off unquoted
        message += f" (YAML reads it as {str(err['input']).lower()}; quote it to mean the word)"
    where = f"{path} [{item}]" if item else str(path)
    more = len(exc.errors()) - 1
    return EvalkitError(message + (f" (and {more} more)" if more else ""), where=where)


def parse_model(model: type[BaseModel], data: Any, path: Path, item: str | None = None) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(path, exc, item) from None


def yaml_files(path: Path, what: str | None = None) -> list[Path]:
    """A YAML file, or the *.yaml / *.yml files of a folder in name order.

    With `what` ("scene", "probe") an empty folder is an error naming what was expected.
    """
    if not path.exists():
        raise EvalkitError("no such file or folder", where=str(path))
    if not path.is_dir():
        return [path]
    # Not hidden files: editors' and file browsers' ('.#x.yaml', '._x.yaml') are not the user's suites.
    files = sorted(p for p in [*path.glob("*.yaml"), *path.glob("*.yml")] if not p.name.startswith("."))
    if not files and what:
        raise EvalkitError(f"folder holds no {what} files (*.yaml)", where=str(path))
    return files


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def stable_hash(obj: Any) -> str:
    """Content hash of a JSON-able object, independent of key order."""
    return sha256_text(json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def cannot_write(path: Path, exc: OSError) -> EvalkitError:
    return EvalkitError(f"cannot write: {exc.strerror or exc}", where=str(path))


def check_writable(path: Path) -> None:
    """Before any work: `path` (a file or folder to be written) can be made where it is named.
    Tried for real in its nearest existing folder, so read-only mounts and full disks show too."""
    if path.is_dir() and not path.is_symlink():
        folder = path
    else:
        folder = path.parent
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
    if not folder.is_dir():
        raise EvalkitError(f"cannot write here: {folder} is not a folder", where=str(path))
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".evalkit-write-check.")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise cannot_write(path, exc) from None


# File systems allow 255 bytes a name; a folder written whole is made as .NAME.<8 chars>.tmp beside it
# (and the folder it replaces is moved aside as .NAME.<8 hex digits>.old).
NAME_BYTES = 255 - len("..12345678.tmp")
# What a write or swap in progress (or killed) leaves beside its target: not a finished output.
IN_PROGRESS = re.compile(r"\..+\.[A-Za-z0-9_]{8}\.(tmp|old)")


def check_name_length(path: Path) -> None:
    """Before any work: a name evalkit writes, and its temp names beside it, fit the file system."""
    size = len(os.fsencode(path.name))
    if size > NAME_BYTES:
        raise EvalkitError(f"the name '{path.name[:40]}...' is {size} bytes; evalkit writes names of at most "
                           f"{NAME_BYTES} (its temp names add to them)", where=str(path.parent))


def inside(root: Path, name: str) -> Path:
    """root/name, refused unless it stays inside root: every path built from a name goes through here."""
    path = root / name
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise EvalkitError(f"'{name}' cannot name a file or folder", where=str(root))
    check_name_length(path)
    if root.resolve() not in path.resolve().parents:
        raise EvalkitError(f"'{name}' would leave the folder it belongs in", where=str(root))
    return path


def write_text_atomic(path: Path, text: str) -> None:
    """Write whole or not at all: a temp file beside `path`, renamed over it. An I/O failure (a full
    disk, a read-only folder) is one line naming the file, and leaves no temp file behind."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise cannot_write(path, exc) from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a report is for others to read
        os.replace(tmp, path)
        note_written(path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise cannot_write(path, exc) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def made_by_evalkit(folder: Path) -> bool:
    return marked_kind(folder) is not None


def marked_kind(folder: Path) -> str | None:
    """What evalkit wrote in `folder` (an adapter, a run report, ...; "" for a mark from before
    kinds were recorded), or None where there is no mark: a link named like it, or a file that
    does not say it is evalkit's, is none."""
    mark = folder / MARK
    try:
        if not stat.S_ISREG(mark.lstat().st_mode):
            return None
        first = mark.read_text(encoding="utf-8").partition("\n")[0]
    except (OSError, UnicodeDecodeError):
        return None
    if not first.startswith(_MARK_TEXT):
        return None
    return first.removeprefix(_MARK_TEXT).removeprefix(": ").partition(";")[0] if ": " in first else ""



def check_replaceable(final: Path, inputs: Iterable[Path] = (), *, kind: str, stores: Iterable[Path] = ()) -> None:
    """Before any work: `final` may be written whole (as a `kind`: "adapter", "run report", ...)
    only if it is absent, empty, or a folder evalkit wrote as the same kind, and is none of the
    command's inputs nor of the `stores` it fills on the way (nor holds or lies in one), nor the
    current folder. Never a user's folder."""
    final = Path(os.path.abspath(final))  # `.` has no name to swap by
    check_name_length(final)
    if final == Path.cwd() or final in Path.cwd().parents:
        raise EvalkitError("is the current folder (or holds it); choose a folder inside it", where=str(final))
    try:
        mode: int | None = final.lstat().st_mode  # one look: another writer may be swapping it
    except (FileNotFoundError, NotADirectoryError):
        mode = None
    if mode is not None and stat.S_ISLNK(mode):
        raise EvalkitError("is a symbolic link; give the folder it points to", where=str(final))
    if mode is not None and not stat.S_ISDIR(mode):
        raise EvalkitError("exists and is not a folder", where=str(final))
    resolved = final.resolve()
    others = [(p, "an input of this command") for p in inputs] + [(p, "where this command keeps what it trains")
                                                                   for p in stores]
    for path, what in others:
        source = Path(path).resolve()
        if source == resolved or resolved in source.parents or source in resolved.parents:
            raise EvalkitError(f"is {what} ({path}); choose another output folder", where=str(final))
    foreign = _foreign(final)
    if foreign and final.parent.is_dir():  # another evalkit may be mid-swap: look again between swaps
        with _locked(final):
            recover_swap(final)
            foreign = _foreign(final)
    if foreign:
        added = _unlisted(final) if final.is_dir() and made_by_evalkit(final) else []
        what = f"holds '{added[0]}', which evalkit did not write" if added else "holds files evalkit did not write"
        raise EvalkitError(f"{what}; refusing to replace it", where=str(final),
                           hint="move your files out, or choose a new or empty folder")
    existing = marked_kind(final) if final.is_dir() else None
    if existing and existing != kind:
        raise EvalkitError(f"holds an evalkit {existing}; refusing to replace it with a {kind}", where=str(final),
                           hint="choose another folder")
    check_writable(final.parent / f".{final.name}.new")  # the new folder is made beside it


# What each single file evalkit writes carries near its start, so only such a file is replaced.
HTML_SIGNATURE = '<meta name="generator" content="evalkit">'
JUNIT_SIGNATURE = 'name="evalkit gate"'
SCHEMA_SIGNATURE = '"$comment": "written by evalkit schema"'
CALIBRATION_SIGNATURE = '"$comment": "written by evalkit calibrate"'


def check_file_replaceable(path: Path, signature: str, inputs: Iterable[Path] = ()) -> None:
    """Before any work: a single file evalkit writes (a report, a schema, JUnit XML) may replace
    only a file it wrote (one carrying `signature` near its start), and never an input."""
    for source in inputs:
        if same_file(path, Path(source)):
            raise EvalkitError(f"is an input of this command ({source}); choose another file", where=str(path))
    try:
        mode: int | None = path.lstat().st_mode
    except (FileNotFoundError, NotADirectoryError):
        mode = None
    if mode is not None and stat.S_ISDIR(mode):
        raise EvalkitError("is a folder; give a file", where=str(path))
    if mode is not None and (stat.S_ISLNK(mode) or not stat.S_ISREG(mode)):
        raise EvalkitError("is not a plain file; refusing to replace it", where=str(path))
    if mode is not None and not _carries(path, signature):
        raise EvalkitError("exists and was not written by evalkit; refusing to replace it", where=str(path),
                           hint="choose a new file name")
    check_writable(path)


def same_file(a: Path, b: Path) -> bool:
    """The same file, by path or by inode (a hard link, a link)."""
    try:
        return a.resolve() == b.resolve() or os.path.samefile(a, b)
    except OSError:
        return False


def _carries(path: Path, signature: str) -> bool:
    """`signature` in the first lines, where evalkit writes it (a note that quotes it further on is
    still the user's)."""
    try:
        with path.open("rb") as fh:
            return signature.encode() in fh.read(256)
    except OSError:
        return False


def _foreign(final: Path) -> bool:
    """Holds anything evalkit did not write: a folder without the mark, or a marked folder with a
    file the mark does not list (a user's note saved into a report folder is theirs)."""
    try:
        return final.is_dir() and any(final.iterdir()) and (not made_by_evalkit(final) or bool(_unlisted(final)))
    except FileNotFoundError:  # swapped away under us
        return False


# Not the user's files, nor evalkit's: Python's bytecode caches (lm-eval imports a task folder's
# module) and what file browsers leave in every folder they show.
_IGNORED = {"__pycache__", ".DS_Store", "Thumbs.db", "desktop.ini"}


def _entries(folder: Path) -> list[str]:
    """Every file and folder under `folder` (links not followed), relative, but the ignored ones."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if d not in _IGNORED]
        for name in dirs + files:
            if name not in _IGNORED and not name.startswith("._"):  # ._*: macOS's resource forks
                found.append((Path(root) / name).relative_to(folder).as_posix())
    return sorted(e for e in found if e != MARK)


def note_written(path: Path) -> None:
    """A file evalkit writes later into a folder it wrote whole (a gate's JUnit XML or summary
    into a demo's folder, a re-rendered report) joins the folder's listing: it is evalkit's too."""
    path = Path(os.path.abspath(path))
    folder = path.parent
    while folder != folder.parent and not (folder / MARK).is_file():
        folder = folder.parent
    mark = folder / MARK
    if folder == folder.parent or not stat.S_ISREG(mark.lstat().st_mode) or not _unlisted(folder):
        return
    entry = path.relative_to(folder)
    added = [p.as_posix() for p in [*reversed(entry.parents[:-1]), entry]]
    with mark.open("a", encoding="utf-8") as fh:
        fh.write("".join(json.dumps(e, ensure_ascii=True) + "\n" for e in added))


def _write_mark(folder: Path, kind: str, listed: bool = True) -> None:
    """The mark's first line says what was written; the lines after it list every entry, so a
    file added later by someone else is seen (and keeps the folder from being replaced). A folder
    still being written is marked without a listing: its files are listed once it is whole."""
    listing = "".join(json.dumps(e, ensure_ascii=True) + "\n" for e in _entries(folder)) if listed else ""
    (folder / MARK).write_text(f"{_MARK_TEXT}: {kind}; evalkit may replace this folder with another {kind}\n"
                               + (f"{_MARK_LIST}\n{listing}" if listed else ""), encoding="utf-8")


def _unlisted(folder: Path) -> list[str]:
    """Entries of a marked folder its mark does not list (none for a mark from before listings)."""
    try:
        lines = (folder / MARK).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return []
    if _MARK_LIST not in lines:
        return []
    try:
        listed = {json.loads(line) for line in lines[lines.index(_MARK_LIST) + 1:] if line}
    except ValueError:
        return _entries(folder)  # an edited listing vouches for nothing
    return [e for e in _entries(folder) if e not in listed]


@contextmanager
def _locked(final: Path) -> Iterator[None]:
    """One writer at a time swaps folders in `final`'s parent (other processes wait a moment: the
    lock covers the renames, not the work). The lock is on the folder itself, so nothing is
    created beside the user's files."""
    fd = os.open(final.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _swapped_out(final: Path) -> re.Pattern[str]:
    """The name a swap gives the folder it replaces: .NAME.<8 hex digits>.old, a name no user gives."""
    return re.compile(re.escape(f".{final.name}.") + r"[0-9a-f]{8}\.old")


def recover_swap(final: Path) -> None:
    """Finish or roll back a swap that was killed: between its two renames it left the old folder
    as .NAME.<8 hex digits>.old and no NAME (the old folder goes back); after them, both (the old
    one goes). Only a folder evalkit marked, holding nothing it did not write, is moved or removed."""
    pattern = _swapped_out(final)
    try:
        found = [p for p in final.parent.iterdir() if pattern.fullmatch(p.name)]
    except OSError:
        return
    for old in sorted(found, key=lambda p: p.lstat().st_mtime, reverse=True):  # the latest goes back
        if not old.is_dir() or old.is_symlink() or not made_by_evalkit(old) or _unlisted(old):
            continue
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.rename(final)


@contextmanager
def atomic_directory(final: Path, inputs: Iterable[Path] = (), *, kind: str) -> Iterator[Path]:
    """Yield a temp dir beside `final`; on success it replaces `final` whole, on error it vanishes.

    Only folders evalkit wrote as the same `kind` (marked) are replaced; the swap holds a lock, so
    concurrent writers take turns (last one wins), and a swap killed half-way is finished by the
    next one."""
    check_replaceable(final, inputs, kind=kind)
    final = Path(os.path.abspath(final))
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        with _locked(final):
            recover_swap(final)
        tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp"))
    except OSError as exc:
        raise cannot_write(final, exc) from None
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        _write_mark(tmp, kind, listed=False)  # marked from the start: a killed swap's leftover is evalkit's
        yield tmp
        _write_mark(tmp, kind)
        with _locked(final):
            recover_swap(final)
            if _foreign(final):  # made while we worked, by someone else: never replaced
                raise EvalkitError("holds files evalkit did not write; refusing to replace it", where=str(final))
            if final.exists():
                old = final.with_name(f".{final.name}.{secrets.token_hex(4)}.old")
                final.rename(old)
                tmp.rename(final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                tmp.rename(final)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise cannot_write(final, exc) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
