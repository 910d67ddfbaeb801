"""The error boundary for the user's files: reading JSON, YAML and safetensors, and writing directories atomically.

Every reader here turns a format error or an OS error into an LntuneError that names the file and says what to do
(re-copy or re-download it, rebuild it), and every writer of a directory writes it under a temporary name beside
the target and renames it into place only when it is complete, removing the temporary folder on any failure
(an error, Ctrl-C). `os_error_message` gives the one line the CLI prints when the operating system refuses a
write (disk full, read-only file system, permission denied) anywhere inside a command.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
from pathlib import Path

from lntune.errors import LntuneError

RECOPY = "re-copy or re-download it"
REBUILD = "re-copy it, or rebuild the model (lntune build / lntune merge)"
RETRAIN = "re-copy the adapter folder, or train it again"


# ---- reading -------------------------------------------------------------------------------------

def _cannot_read(path: Path, error: OSError, remedy: str) -> LntuneError:
    if isinstance(error, FileNotFoundError):
        return LntuneError(f"{path} not found; {remedy}")
    if isinstance(error, IsADirectoryError):
        return LntuneError(f"{path} is a folder, not a file")
    return LntuneError(f"cannot read {path}: {error.strerror or error}; {remedy}")


def read_text(path: str | Path, remedy: str = RECOPY) -> str:
    """A UTF-8 text file, or an LntuneError naming it (missing, unreadable, not UTF-8)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise _cannot_read(path, error, remedy) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise LntuneError(f"{path}:{line}: not UTF-8 text (byte {error.start}); the file is damaged: {remedy}") from None


def read_json(path: str | Path, remedy: str = RECOPY):
    """A JSON file's value, or an LntuneError with file:line:column."""
    path = Path(path)
    text = read_text(path, remedy)
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise LntuneError(f"{path}:{error.lineno}:{error.colno}: invalid JSON ({error.msg}); {remedy}") from None


def read_json_object(path: str | Path, remedy: str = RECOPY) -> dict:
    """A JSON file that must hold an object (configs, manifests)."""
    data = read_json(path, remedy)
    if not isinstance(data, dict):
        raise LntuneError(f"{path}: expected a JSON object, found {type(data).__name__}; {remedy}")
    return data


def read_yaml(path: str | Path, remedy: str = "fix the file"):
    """A YAML file's value (safe_load), or an LntuneError with file:line:column."""
    import yaml

    path = Path(path)
    text = read_text(path, remedy)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise LntuneError(f"{where}: invalid YAML ({getattr(error, 'problem', None) or error})") from None


# ---- safetensors ---------------------------------------------------------------------------------

def _safetensors_problem(error: Exception) -> str:
    """safetensors' message without its prefix: 'header too large', 'incomplete metadata, file not fully covered'."""
    return str(error).removeprefix("Error while deserializing header: ").strip()


def check_safetensors(path: str | Path, remedy: str = RECOPY) -> None:
    """Refuse a truncated or corrupt .safetensors file before anything loads it.

    safe_open parses the header and checks that the tensors cover the file exactly, so a file cut short (an
    interrupted copy or download) or overwritten with something else is caught here, in milliseconds, at any size.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt"):
            pass
    except OSError as error:
        raise _cannot_read(path, error, remedy) from None
    except SafetensorError as error:
        raise LntuneError(f"{path} is truncated or corrupt ({_safetensors_problem(error)}); {remedy}") from None


def safetensors_header(path: str | Path, remedy: str = RECOPY) -> tuple[dict, int]:
    """(header, byte offset where the tensor data starts) of a checked .safetensors file.

    The header holds every tensor's dtype, shape and data offsets (safe_open does not expose the offsets, which
    fingerprints sample by)."""
    path = Path(path)
    check_safetensors(path, remedy)
    try:
        with path.open("rb") as handle:
            size = int.from_bytes(handle.read(8), "little")
            return json.loads(handle.read(size)), 8 + size
    except OSError as error:
        raise _cannot_read(path, error, remedy) from None


def load_safetensors(path: str | Path, remedy: str = RECOPY) -> dict:
    """All tensors of a .safetensors file (on the CPU), or an LntuneError naming the file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    check_safetensors(path, remedy)
    try:
        return load_file(str(path))
    except OSError as error:
        raise _cannot_read(Path(path), error, remedy) from None
    except SafetensorError as error:
        raise LntuneError(f"{path} is truncated or corrupt ({_safetensors_problem(error)}); {remedy}") from None


# The JSON files transformers reads from a model directory (other JSON files are not checked: a stray broken file
# that nothing reads must not stop a command); check_model_files adds PEFT's adapter config, which it reads too.
MODEL_JSON_FILES = (
    "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
    "added_tokens.json", "vocab.json", "preprocessor_config.json", "processor_config.json", "chat_template.json",
)


def check_model_files(model_dir: str | Path, remedy: str = RECOPY) -> None:
    """Check a model directory's files before a from_pretrained reads them: the JSON files it reads parse, every
    .safetensors header is sound, and every shard a safetensors index names is there."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        return  # a config.json given directly: the callers check what they read
    from lntune.adapter import PEFT_CONFIG  # named in adapter.py, which imports this module

    json_files = [model_dir / name for name in MODEL_JSON_FILES + (PEFT_CONFIG,) if (model_dir / name).exists()]
    for path in json_files + sorted(model_dir.glob("*.safetensors.index.json")):
        data = read_json(path, remedy)
        if path.name.endswith(".safetensors.index.json"):
            weight_map = data.get("weight_map") if isinstance(data, dict) else None
            if not isinstance(weight_map, dict):
                raise LntuneError(f"{path}: no weight_map; {remedy}")
            for shard in sorted(set(weight_map.values())):
                if not (model_dir / shard).is_file():
                    raise LntuneError(f"{model_dir / shard} is missing (named in {path.name}); {remedy}")
    for path in sorted(model_dir.glob("*.safetensors")):
        check_safetensors(path, remedy)


@contextlib.contextmanager
def loading(model_dir: str | Path, what: str, remedy: str = RECOPY, check: bool = True):
    """Around a from_pretrained call: an unreadable or damaged file becomes an LntuneError naming it.

    `check_model_files` runs first (unless the caller just ran it: check=False) and names the file when it can;
    what the library still trips over (a damaged .bin, a missing file) is reported with the directory and the
    library's own reason. Other errors keep their traceback (they are bugs, not the user's files), and OS refusals
    (permission denied) pass through to the CLI's one line."""
    import pickle

    from safetensors import SafetensorError

    if check:
        check_model_files(model_dir, remedy)
    try:
        yield
    except SafetensorError as error:
        raise LntuneError(f"cannot load {what} from {model_dir}: a weights file is damaged "
                          f"({_safetensors_problem(error)}); {remedy}") from None
    except (OSError, EOFError, pickle.UnpicklingError, json.JSONDecodeError, UnicodeDecodeError, RuntimeError) as error:
        if isinstance(error, OSError) and error.errno in OS_PROBLEMS:
            raise
        if isinstance(error, RuntimeError) and "PytorchStreamReader" not in str(error):
            raise  # torch.load of a damaged .bin says PytorchStreamReader; other RuntimeErrors are not about files
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        damaged = _incomplete_torch_files(model_dir)
        if damaged:
            reason = f"{damaged[0]} is truncated or corrupt (not a complete torch archive)"
        raise LntuneError(f"cannot load {what} from {model_dir}: {reason}; {remedy}") from None


def _incomplete_torch_files(model_dir: str | Path) -> list[Path]:
    """The *.bin weights that are not complete zip archives (torch.save's format since torch 1.6; a cut-off copy
    loses the archive's directory at its end). Only asked once loading has failed, to name the file."""
    import zipfile

    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        return []
    return [path for path in sorted(model_dir.glob("*.bin")) if not zipfile.is_zipfile(path)]


# ---- the operating system refusing a write -------------------------------------------------------

OS_PROBLEMS = {
    errno.ENOSPC: ("disk full while writing {}", "free space or choose another --out"),
    errno.EDQUOT: ("disk quota exceeded while writing {}", "free space or choose another --out"),
    errno.EROFS: ("read-only file system: cannot write {}", "choose another --out"),
    errno.EACCES: ("permission denied: {}", "check its permissions or choose another --out"),
    errno.EPERM: ("operation not permitted: {}", "check its permissions or choose another --out"),
}
_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")


def _errno_and_file(error: BaseException) -> tuple[int, str | None] | None:
    """(errno, file name) of an OS refusal in `error` or what caused it; safetensors (Rust) writes report theirs
    as 'I/O error: No space left on device (os error 28)' in a SafetensorError."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in OS_PROBLEMS:
            return error.errno, error.filename
        if type(error).__name__ == "SafetensorError":
            match = _RUST_OS_ERROR.search(str(error))
            if match and int(match.group(1)) in OS_PROBLEMS:
                return int(match.group(1)), None
        error = error.__cause__ or error.__context__
    return None


def os_error_message(error: BaseException, out: str | Path | None = None) -> str | None:
    """One line for an OS refusal (disk full, quota, read-only, permission denied) anywhere in `error`'s causes,
    naming the file (or, when the OS did not say, the command's --out); None for any other error."""
    found = _errno_and_file(error)
    if found is None:
        return None
    code, filename = found
    what, remedy = OS_PROBLEMS[code]
    target = filename or (str(out) if out is not None else "the output")
    return f"{what.format(target)} ({remedy})"


# ---- writing directories atomically ---------------------------------------------------------------

def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_staging(out: Path) -> None:
    """Staging folders left by a process that was killed outright (SIGKILL, power loss): nothing else owns them."""
    for stale in out.parent.glob(f".{out.name}.partial-*"):
        pid = stale.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not _process_alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)


@contextlib.contextmanager
def staged_directory(out: str | Path):
    """Yield a staging folder beside `out`; when the block completes, it replaces `out` in one rename.

    On any failure inside the block (an error, a full disk, Ctrl-C) the staging folder is removed and `out` is
    left exactly as it was. An existing `out` is moved aside, not deleted, until the new one is in place."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_staging(out)
    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir()
        yield staging
        if out.exists() or out.is_symlink():
            previous = out.parent / f".{out.name}.previous-{os.getpid()}"
            shutil.rmtree(previous, ignore_errors=True)
            out.rename(previous)
            try:
                staging.rename(out)
            except BaseException:
                previous.rename(out)
                raise
            _remove(previous)
        else:
            staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write a small text file so that a reader sees the old content or the new, never a torn one."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


# ---- paths that must not overlap ------------------------------------------------------------------

def check_out_apart(out: str | Path, inputs: dict[str, str | Path], flag: str = "--out") -> None:
    """Refuse an output folder that is, contains, or is inside one of the inputs (writing it would change them)."""
    target = Path(out).expanduser().resolve()
    for name, source in inputs.items():
        if source is None:
            continue
        source_path = Path(source).expanduser().resolve()
        if target == source_path:
            relation = "is"
        elif source_path.is_relative_to(target):
            relation = "contains"
        elif target.is_relative_to(source_path):
            relation = "is inside"
        else:
            continue
        raise LntuneError(f"{flag} {out} {relation} the {name} folder {source}; writing there would change the "
                          f"{name}: choose an {flag} outside it")
