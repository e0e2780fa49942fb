"""Where suite data comes from.

Lookup order for a known data file (``mbpp/mbpp.jsonl`` and friends):

1. the explicit ``data_dir`` argument (the CLI's ``--data-dir``), else
2. the directory in the ``ACCBENCH_DATA_DIR`` environment variable, else
3. the Hugging Face hub, through the ``datasets`` package (users with network).

A configured directory (1 or 2) is authoritative: when the file is missing there, the
lookup fails with an error naming the file and the directory, instead of silently falling
back to the environment or the network. Inside a data directory the layout is fixed::

    mbpp/mbpp.jsonl
    summarization/cnn_dailymail_0shot.jsonl
    longctx/multi_news.jsonl
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

from accbench.errors import AccbenchError

ENV_VAR = "ACCBENCH_DATA_DIR"

MBPP = "mbpp/mbpp.jsonl"
CNNDM = "summarization/cnn_dailymail_0shot.jsonl"
MULTI_NEWS = "longctx/multi_news.jsonl"

#: known files -> a few words on what they are (used in messages)
KNOWN_FILES: dict[str, str] = {
    MBPP: "MBPP full, 974 problems",
    CNNDM: "CNN/DailyMail 3.0.0 test, HELM 0-shot prompts",
    MULTI_NEWS: "LongBench multi_news",
}


# ---------------------------------------------------------------------------------------
# JSONL


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every object in a JSON-lines file, blank lines skipped.

    Raises :class:`AccbenchError` naming the file (and the line) when the file is missing,
    is not UTF-8, or a line is not a JSON object."""
    return [rec for _, rec in read_jsonl_numbered(path)]


def read_jsonl_numbered(path: str | os.PathLike[str]) -> list[tuple[int, dict[str, Any]]]:
    """Like :func:`read_jsonl` but yields ``(line_number, record)``, line numbers from 1."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise AccbenchError(f"data file not found: {p}") from None
    except IsADirectoryError:
        raise AccbenchError(f"data file is a directory, expected a JSONL file: {p}") from None
    except UnicodeDecodeError as e:
        raise AccbenchError(f"{p}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise AccbenchError(f"cannot read data file {p}: {e.strerror or e}") from None
    out: list[tuple[int, dict[str, Any]]] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise AccbenchError(f"{p}:{lineno}: malformed JSON ({e.msg}, column {e.colno})") from None
        if not isinstance(rec, dict):
            raise AccbenchError(f"{p}:{lineno}: expected a JSON object, got {type(rec).__name__}")
        out.append((lineno, rec))
    return out


# ---------------------------------------------------------------------------------------
# Local lookup


def configured_dir(data_dir: str | os.PathLike[str] | None = None) -> tuple[Path, str] | None:
    """The data directory in force and where it came from (``"--data-dir"`` or the env
    variable's name), or None when neither is set."""
    if data_dir is not None and str(data_dir) != "":
        return Path(data_dir).expanduser(), "--data-dir"
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        return Path(env).expanduser(), ENV_VAR
    return None


def local_path(relpath: str, data_dir: str | os.PathLike[str] | None = None) -> Path | None:
    """``<data dir>/<relpath>`` if a data directory is configured and holds the file."""
    conf = configured_dir(data_dir)
    if conf is None:
        return None
    p = conf[0] / relpath
    return p if p.is_file() else None


def _missing_message(relpath: str, where: tuple[Path, str]) -> str:
    d, origin = where
    if not d.is_dir():
        return f"data directory {d} (from {origin}) does not exist; it should contain {relpath}"
    return f"{relpath} not found in {d} (from {origin}); put the file there (layout: {relpath})"


def _no_dir_hint(relpath: str) -> str:
    return f"put {relpath} under a directory DIR and pass --data-dir DIR or set {ENV_VAR}=DIR"


def resolve_data_file(
    data_file: str | os.PathLike[str], data_dir: str | os.PathLike[str] | None = None
) -> Path:
    """A user-given ``--data FILE``: as given (absolute or relative to the working
    directory), else relative to the configured data directory."""
    p = Path(data_file).expanduser()
    if p.is_file():
        return p
    conf = configured_dir(data_dir)
    if not p.is_absolute() and conf is not None and (conf[0] / p).is_file():
        return conf[0] / p
    if p.exists():
        raise AccbenchError(f"--data {data_file}: not a file")
    raise AccbenchError(f"--data {data_file}: file not found")


# ---------------------------------------------------------------------------------------
# Hugging Face hub fallback (needs network; not exercised by the offline tests)


def _hub_mbpp() -> list[dict[str, Any]]:
    """google-research-datasets/mbpp, config ``full``: all splits, sorted by task_id, in
    the record format of mbpp.jsonl."""
    import datasets

    dsd = datasets.load_dataset("google-research-datasets/mbpp", "full")
    fields = ("task_id", "text", "code", "test_list", "test_setup_code", "challenge_test_list")
    rows = [{k: row[k] for k in fields} for split in dsd.values() for row in split]
    rows.sort(key=lambda r: r["task_id"])
    return rows


def _hub_cnndm(n: int = 1000) -> list[dict[str, Any]]:
    """abisee/cnn_dailymail 3.0.0, first ``n`` test articles, as HELM 0-shot prompts
    (the format of cnn_dailymail_0shot.jsonl)."""
    import datasets

    ds = datasets.load_dataset("abisee/cnn_dailymail", "3.0.0", split=f"test[:{n}]")
    return [
        {
            "article": f"###\nArticle: {row['article']}\n\nSummarize the above article in 3 sentences.",
            "summary_gt": row["highlights"],
            "logprobs": 1,
            "max_tokens": 128,
            "n": 1,
            "stop": ["###"],
            "temperature": 0.3,
            "top_p": 1,
        }
        for row in ds
    ]


HUB_LOADERS: dict[str, tuple[str, Callable[[], list[dict[str, Any]]]]] = {
    MBPP: ("google-research-datasets/mbpp (full)", _hub_mbpp),
    CNNDM: ("abisee/cnn_dailymail (3.0.0, test)", _hub_cnndm),
}


def _hub_available() -> bool:
    """Is ``datasets`` installed? (found without importing it: that takes seconds)"""
    import importlib.util

    return importlib.util.find_spec("datasets") is not None


def _first_line(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0]}" if msg else type(e).__name__


def load_records(
    relpath: str, data_dir: str | os.PathLike[str] | None = None
) -> tuple[list[dict[str, Any]], str]:
    """Records of a known data file and a description of where they came from (a path, or
    ``hub:<dataset>``). Follows the lookup order in the module docstring."""
    conf = configured_dir(data_dir)
    if conf is not None:
        p = conf[0] / relpath
        if not p.is_file():
            raise AccbenchError(_missing_message(relpath, conf))
        return read_jsonl(p), str(p)
    if relpath not in HUB_LOADERS:
        raise AccbenchError(f"no local copy of {relpath} and no hub source for it: {_no_dir_hint(relpath)}")
    hub_name, loader = HUB_LOADERS[relpath]
    if not _hub_available():
        raise AccbenchError(
            f"no local copy of {relpath} and the 'datasets' package (for the hub) is not installed: "
            f"{_no_dir_hint(relpath)}"
        )
    try:
        rows = loader()
    except Exception as e:  # network, auth, format: all end up as one user-facing line
        raise AccbenchError(
            f"no local copy of {relpath} and the Hugging Face hub failed ({_first_line(e)}): "
            f"{_no_dir_hint(relpath)}"
        ) from None
    return rows, f"hub:{hub_name}"


def readiness(relpath: str, data_dir: str | os.PathLike[str] | None = None) -> str:
    """Short status for ``accbench list``; never touches the network."""
    conf = configured_dir(data_dir)
    if conf is not None:
        p = conf[0] / relpath
        if p.is_file():
            return f"ready ({p})"
        if not conf[0].is_dir():
            return f"needs data: {conf[0]} (from {conf[1]}) does not exist; put {relpath} there"
        return f"needs data: put {relpath} in {conf[0]} (from {conf[1]})"
    if relpath in HUB_LOADERS and _hub_available():
        return "needs network (hub)"
    return f"needs data: put {relpath} in DIR and pass --data-dir DIR or set {ENV_VAR}"
