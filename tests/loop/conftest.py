"""The loop's tests train, sample and annotate with the training tests' real fixtures."""

from tests.modeling.conftest import (  # noqa: F401  (fixtures, found by name)
    base_checkpoint,
    empty_gpu_queue,
    fast_jobs,
    gpu_worker,
    labelled_project,
    make_snapshot,
)
