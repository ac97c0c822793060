"""Each pipeline under real 2-process gloo DDP: the two ranks together see every sample exactly once per epoch,
and the run equals one process accumulating the same global batch (views are keyed by sample, not by rank)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pytest
import torch

from tests.data_factory import small_imagenet
from tests.test_distributed import parameters_only
from tests.train_helpers import final_model, train

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")]
# every backend side by side (the data fixture writes .betons): both extras are needed
pytest.importorskip("ffcv", reason="the ffcv extra is not installed (pip install 'pekd[ffcv]')")
pytest.importorskip("nvidia.dali", reason="the DALI extra is not installed (pip install 'pekd[dali-cu13]')")


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """48 train / 12 val JPEGs of 48-160 px and their .betons."""
    return small_imagenet(tmp_path_factory.mktemp("ddp_pipelines"))


def overrides(root: Path, pipeline: str, run_dir: Path) -> list[str]:
    """CE resnet8 on 24 px RandomResizedCrops, global batch 16 in micro-batches of 8, two epochs of 3 steps."""
    return ["data=imagenet", f"data.root={root}", "data.image_size=24", "data.eval_resize=0", "data.batch_size=16",
            "data.max_micro_batch=8", "data.eval_batch_size=8", "data.workers=1", f"data.pipeline={pipeline}",
            f"data.train_beton={root / 'train.beton'}", f"data.val_beton={root / 'val.beton'}", "model=resnet8",
            "method=ce", "teacher=none", "trainer.epochs=2", "trainer.milestones=[1]", "trainer.progress=false",
            "trainer.threads=1", "trainer.deterministic=true", "trainer.amp=off", "trainer.audit_samples=true",
            f"run_dir={run_dir}"]


@pytest.mark.parametrize("pipeline", ["ffcv", "dali"])
def test_two_ranks_cover_each_epoch_once_and_match_one_process(root, tmp_path, pipeline):
    results = train(overrides(root, pipeline, tmp_path / "two"), world=2)
    assert all(rc == 0 for rc, _ in results), results
    seen: dict[tuple[int, int], list[int]] = defaultdict(list)
    for f in (tmp_path / "two" / "logs").glob("samples-rank*.txt"):
        for line in f.read_text().splitlines():
            epoch, _, *idx = map(int, line.split())
            seen[epoch, int(f.stem[-1])].extend(idx)
    for epoch in (0, 1):
        a, b = seen[epoch, 0], seen[epoch, 1]
        assert len(a) == len(b) == 24 and sorted(a + b) == list(range(48)), f"epoch {epoch}: {a} + {b}"

    [(rc, err)] = train(overrides(root, pipeline, tmp_path / "one"), world=1)
    assert rc == 0, err
    one, two = parameters_only(final_model(tmp_path / "one")), parameters_only(final_model(tmp_path / "two"))
    assert one.keys() == two.keys()
    for k in one:
        torch.testing.assert_close(one[k], two[k], rtol=1e-4, atol=1e-5, msg=k)
