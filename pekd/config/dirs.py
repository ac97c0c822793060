"""Where Hydra finds pekd's configs: the folder shipped with pekd, plus a user's own folders.

One copy of the configs lives in the repository's top-level `configs/`. A wheel carries it as the package data
`pekd/configs` (pyproject's package-dir maps one onto the other), so a non-editable install finds its configs
next to its code, and a checkout or editable install finds the repository's folder. PEKD_CONFIG_DIR replaces the
whole folder (a fork of all configs); PEKD_CONFIG_PATH adds folders of the user's own, searched after pekd's, so
`experiment=my_run` can name `<folder>/experiment/my_run.yaml` without copying or editing pekd's configs.
"""

from __future__ import annotations

import os
from pathlib import Path

from pekd.errors import PekdError

CONFIG_DIR_ENV = "PEKD_CONFIG_DIR"
CONFIG_PATH_ENV = "PEKD_CONFIG_PATH"
_PACKAGE = Path(__file__).resolve().parents[1]  # pekd/ (this file is pekd/config/dirs.py)


def config_dir() -> Path:
    """pekd's own config folder: PEKD_CONFIG_DIR, else the wheel's package data, else the checkout's configs/.

    The packaged copy is looked for first: next to a wheel in site-packages, `../configs` is any folder some
    other distribution happened to install under that name."""
    if os.environ.get(CONFIG_DIR_ENV):
        return Path(os.environ[CONFIG_DIR_ENV])
    packaged = _PACKAGE / "configs"
    return packaged if (packaged / "config.yaml").is_file() else _PACKAGE.parent / "configs"


def user_config_dirs() -> list[Path]:
    """The folders listed in PEKD_CONFIG_PATH (separated like PATH), each checked to exist."""
    dirs = []
    for entry in os.environ.get(CONFIG_PATH_ENV, "").split(os.pathsep):
        if not entry.strip():
            continue
        folder = Path(entry).expanduser().resolve()
        if not folder.is_dir():
            raise PekdError(f"{CONFIG_PATH_ENV} names {entry!r}, which is not a folder; list existing folders "
                            f"(separated by {os.pathsep!r}) that hold config groups such as experiment/<name>.yaml")
        dirs.append(folder)
    return dirs


def searchpath_override() -> list[str]:
    """The Hydra override that adds the user's folders to the search path ([] when there are none)."""
    dirs = user_config_dirs()
    if not dirs:
        return []
    quoted = []
    for d in dirs:
        if "'" in str(d) or "\\" in str(d):
            raise PekdError(f"{CONFIG_PATH_ENV} folder {str(d)!r} has a quote or backslash in its path, which "
                            "Hydra's override syntax cannot carry; move or link the folder to a plainer path")
        quoted.append(f"'file://{d}'")
    return ["hydra.searchpath=[" + ",".join(quoted) + "]"]


CONFIG_DIR = config_dir()
