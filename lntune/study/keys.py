"""Runs keyed by their configuration: a run's folder name holds a hash of its whole RunConfig (all but `out`), and a
folder is reused only when the config it recorded is the one asked for.

So a compare that was stopped goes on where it stopped (finished runs are reused, an unfinished one is started
again), the same run asked for twice (by two studies, or by the learning-rate search and the seed runs) trains once,
and a changed config (another budget, rate, seed, data or stage-1 model) never silently reuses a stale run.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from lntune.config import RunConfig, config_to_dict
from lntune.errors import LntuneError
from lntune.files import read_yaml

KEY_FILE = "lntune_key.json"
"""What a keyed folder that is not a training run (the built model, stage 1's run) records of what made it."""


def config_key(config: RunConfig) -> str:
    """12 hex digits of the SHA-256 of the run's config without `out` (a run folder may move)."""
    record = {key: value for key, value in config_to_dict(config).items() if key != "out"}
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:12]


def run_folder_name(config: RunConfig) -> str:
    """method-lrRATE-seedSEED-KEY: readable, and unique per config (the key)."""
    rate = "default" if config.train.lr is None else f"{config.train.lr:g}"
    return f"{config.method.name}-lr{rate}-seed{config.train.seed}-{config_key(config)}"


def finished_run(config: RunConfig) -> bool:
    """Whether `config.out` holds this very run, finished. A finished run recorded with another config is an error
    (never reused); an unfinished one is removed, to be trained again."""
    out = Path(config.out)
    if not (out / "summary.json").is_file():
        if out.exists():
            shutil.rmtree(out)  # a run the interruption left unfinished: it starts again
        return False
    recorded = read_yaml(out / "config.yaml", "delete the run folder to train it again")
    wanted = config_to_dict(config)
    differing = sorted(key for key in set(recorded or {}) | set(wanted)
                       if key != "out" and (recorded or {}).get(key) != wanted.get(key))
    if differing:
        raise LntuneError(f"{out} holds a finished run made with another config (differing: {', '.join(differing)}); "
                          "delete that folder, or choose another --out")
    return True


def check_folder_key(folder: Path, record: dict) -> bool:
    """Whether `folder` (finished, by its caller's test) was made from `record`; refuse one made from another.

    Returns False when the folder records nothing yet (the caller makes it, then calls write_folder_key).
    """
    path = Path(folder) / KEY_FILE
    if not path.is_file():
        return False
    recorded = json.loads(path.read_text())
    if recorded != json.loads(json.dumps(record)):
        differing = sorted(key for key in set(recorded) | set(record) if recorded.get(key) != record.get(key))
        raise LntuneError(f"{folder} was made with other settings (differing: {', '.join(differing)}); "
                          "delete it to make it again, or choose another --out")
    return True


def write_folder_key(folder: Path, record: dict) -> None:
    Path(folder).mkdir(parents=True, exist_ok=True)
    (Path(folder) / KEY_FILE).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
