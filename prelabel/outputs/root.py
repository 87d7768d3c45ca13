"""Where a queued job may write its outputs: under the roots the operator gave the worker.

A job file dropped into a spool (or queued by ``submit``) names its own ``output.dir``; run by
``prelabel work``, it must not be able to write into ``/etc`` or ``../../``. Paths are compared with
every symlink resolved, so neither ``..`` nor a symlink inside a root leads out of it.
``prelabel run`` (its user at the command line) may write anywhere.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from ..errors import JobFileError


def within(path: Path, roots: Sequence[Path]) -> bool:
    real = Path(os.path.realpath(path))
    return any(real.is_relative_to(os.path.realpath(root)) for root in roots)


def confine(out_dir: Path, roots: Sequence[Path], job_file: str | None = None) -> None:
    """Raise ``JobFileError`` (field ``output.dir``) unless ``out_dir`` is under one of ``roots``."""
    if within(out_dir, roots):
        return
    real = os.path.realpath(out_dir)
    shown = f"{out_dir}" + (f" (really {real})" if real != str(out_dir) else "")
    if not roots:  # a PostgreSQL URL has no folder to default to, and no --spool was given
        raise JobFileError(f"{shown}: no output root is set, and a queued job writes only under one. Start the "
                           "worker with --output-root DIR (or PRELABEL_OUTPUT_ROOT=DIR) naming a folder that holds "
                           "this one (with a database URL there is no database folder to default to)",
                           path=job_file, field="output.dir")
    raise JobFileError(f"{shown} is outside the output root ({', '.join(str(r) for r in roots)}): a queued job "
                       "writes only under it. Set output.dir under it, or start the worker with --output-root "
                       "(or PRELABEL_OUTPUT_ROOT) naming a folder that holds this one",
                       path=job_file, field="output.dir")
