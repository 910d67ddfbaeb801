"""What every fault test checks: one line on stderr, a non-zero exit, and earlier files left byte for byte."""

import hashlib
from pathlib import Path

from lntune.cli import main


def run_main(capsys, *argv):
    """(exit code, what main itself wrote to stderr), stripped; output printed before main (fixtures) is dropped."""
    capsys.readouterr()
    code = main([str(arg) for arg in argv])
    return code, capsys.readouterr().err.strip()


def assert_one_line_error(code, err, command, *fragments, progress: bool = False):
    """stderr is exactly the one error line. progress=True: a failure late in a command (a full disk while saving)
    comes after the command's own progress lines ("loading LLM from ...", the training progress bar); then the error
    is the last line, the only one that says error, and there is no traceback."""
    assert code == 1, err
    assert "Traceback" not in err, err
    lines = err.split("\n")
    if not progress:
        assert len(lines) == 1 and "\r" not in err, f"not one line:\n{err}"
    assert not any("error" in line.lower() for line in lines[:-1]), err
    line = lines[-1]
    assert line.startswith(f"lntune {command}: error: "), err
    for fragment in fragments:
        assert fragment in line, f"{fragment!r} not in {line!r}"


def tree_digest(root) -> dict:
    """{relative path: sha256} of every file under root (folders too, as None), to compare before and after."""
    root = Path(root)
    found = {}
    for path in sorted(root.rglob("*")):
        found[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
    return found


def leftovers(folder) -> list[str]:
    """Staging folders and files a failed write could leave beside its target."""
    return sorted(path.name for path in Path(folder).iterdir() if ".partial-" in path.name or path.name.endswith(".tmp"))


# Code a subprocess runs first, so that DeepSpeed is imported after lntune.cli.main set its logs' routing, as in the
# CLI; --version is the cheapest run of main (its line is put aside: stdout then holds only what DeepSpeed writes).
AFTER_MAIN = ("import contextlib, io\nfrom lntune.cli import main\n"
              "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
              "    main(['--version'])\n")
