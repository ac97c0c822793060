"""Exports and run directories record the git revision that made them, not only the version number."""

from __future__ import annotations

import subprocess

from pekd.engine.export import export_metadata
from pekd.engine.rundir import git_revision
from pekd.models import build_model
from tests.train_helpers import REPO


def test_exports_record_the_checkout_revision() -> None:
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    revision = git_revision()
    assert len(head) == 40 and revision.removesuffix("+dirty") == head
    meta = export_metadata(build_model("resnet8", 10, 1), (0.5,), (0.25,))
    assert meta["pekd_git"] == revision and meta["pekd_version"]
