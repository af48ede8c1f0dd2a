"""Reading user files with errors that name them, and writing files that are never half-written."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import yaml
from pydantic import BaseModel, ValidationError

from evalkit.errors import EvalkitError

# Ids of scenes, suites, items and plans: they name folders and files, so nothing that could
# leave the folder they are written in (no '/', no '..', no leading dot).
ID_PATTERN = r"^[a-z0-9][a-z0-9_-]*$"


def read_yaml_mapping(path: Path) -> dict[str, Any]:
    """Parse a YAML file that must hold one mapping."""
    if not path.exists():
        raise EvalkitError("no such file", where=str(path))
    if not path.is_file():
        raise EvalkitError("not a file", where=str(path))
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise EvalkitError(f"not valid YAML{at}: {getattr(exc, 'problem', exc)}", where=str(path)) from None
    except UnicodeDecodeError:
        raise EvalkitError("not a UTF-8 text file", where=str(path)) from None
    if not isinstance(data, dict):
        raise EvalkitError(f"expected a YAML mapping at the top, found {type(data).__name__}", where=str(path))
    return data


def validation_error(path: Path, exc: ValidationError, item: str | None = None, skip: int = 0) -> EvalkitError:
    """Turn pydantic's first error into one line: file, item, field, what is wrong.

    `skip` drops leading parts of the error's location (e.g. the list index of an item
    that `item` already names).
    """
    err = exc.errors()[0]
    field = ".".join(str(p) for p in err["loc"][skip:]) or "(top level)"
    if err["type"] == "extra_forbidden":
        message = f"unknown field '{field}'"
    elif err["type"] == "missing":
        message = f"field '{field}' is required"
    else:
        message = f"field '{field}': {err['msg']}"
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
    files = sorted([*path.glob("*.yaml"), *path.glob("*.yml")])
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


def write_text_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a report is for others to read
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


@contextmanager
def atomic_directory(final: Path) -> Iterator[Path]:
    """Yield a temp dir beside `final`; on success it replaces `final` whole, on error it vanishes."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp"))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        if final.exists():
            old = final.with_name(f".{final.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
