"""Dawid–Skene: each annotator's confusion matrix and each item's posterior over its true label.

The model and its fit follow Dawid & Skene (1979), "Maximum Likelihood Estimation of Observer
Error-Rates Using the EM Algorithm", exactly as crowd-kit 1.4.2's ``DawidSkene`` computes it:
majority-vote shares as the first posteriors, then EM (M-step: every confusion entry an annotator
produced, floored at 1e-10 and normalised per true label; E-step: prior times the product of the
annotators' entries) until the evidence lower bound per label gains less than ``tol``.
tests/feedback/test_dawid_skene.py checks the posteriors, priors and confusion matrices against
crowd-kit itself on random crowds.

It is a few lines of numpy here rather than an import: importing ``crowdkit.aggregation`` takes
2.5 s warm (it loads every aggregator, and with them pandas, scikit-learn, nltk and scipy.stats),
which the first Quality page of each server process would pay (issue #17 took those away), and
1.4.2 calls pandas APIs that pandas 3.1 deprecates for removal. On 10,000 labels this fit takes
milliseconds.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass

import numpy as np

EPS = 1e-10  # crowd-kit's floor for a probability before its logarithm is taken


@dataclass(frozen=True)
class DawidSkeneFit:
    task_index: dict[Hashable, int]  # task -> its row of `posteriors`
    workers: list[Hashable]
    labels: list[Hashable]  # sorted; every array's label axis follows this order
    posteriors: np.ndarray  # tasks × labels: P(true label | every answer)
    priors: np.ndarray  # labels
    errors: np.ndarray  # workers × answered label × true label: P(answer | true label)
    iterations: int
    # The answers, as indices: task, worker, label of each.
    task_of: np.ndarray
    worker_of: np.ndarray
    label_of: np.ndarray

    def posterior(self, task: Hashable) -> dict[Hashable, float]:
        """{label: probability that it is the task's true label}; {} for a task not fitted."""
        row = self.task_index.get(task)
        if row is None:
            return {}
        return dict(zip(self.labels, self.posteriors[row].tolist(), strict=True))

    def reliability(self) -> dict[Hashable, tuple[float, int]]:
        """Per worker: the model's probability that their answer is the true label, averaged
        over their answers, and how many answers that is. It equals the diagonal of their
        confusion matrix weighted by the true labels of the items they answered."""
        correct = self.posteriors[self.task_of, self.label_of]
        n = np.bincount(self.worker_of, minlength=len(self.workers))
        total = np.bincount(self.worker_of, weights=correct, minlength=len(self.workers))
        return {
            worker: (float(total[i] / n[i]), int(n[i]))
            for i, worker in enumerate(self.workers)
            if n[i]
        }


def dawid_skene(
    answers: Iterable[tuple[Hashable, Hashable, Hashable]],
    *,
    max_iterations: int = 100,
    tol: float = 1e-5,
) -> DawidSkeneFit:
    """Fit on (task, worker, label) triples; labels are any sortable values."""
    task_index: dict[Hashable, int] = {}
    worker_index: dict[Hashable, int] = {}
    raw_labels: list[Hashable] = []
    tasks_seen, workers_seen = [], []
    for task, worker, label in answers:
        tasks_seen.append(task_index.setdefault(task, len(task_index)))
        workers_seen.append(worker_index.setdefault(worker, len(worker_index)))
        raw_labels.append(label)
    labels = sorted(set(raw_labels))
    label_index = {label: i for i, label in enumerate(labels)}
    t = np.array(tasks_seen, dtype=np.intp)
    w = np.array(workers_seen, dtype=np.intp)
    k = np.array([label_index[label] for label in raw_labels], dtype=np.intp)
    if not labels:
        nothing = np.zeros((0, 0))
        return DawidSkeneFit({}, [], [], nothing, np.zeros(0), np.zeros((0, 0, 0)), 0, t, w, k)
    shape = (len(task_index), len(worker_index), len(labels))
    model = _Model(t, w, k, shape)

    posteriors = model.majority_shares()
    priors = posteriors.mean(axis=0)
    errors = model.m_step(posteriors)
    bound, iterations = -np.inf, 0
    for iterations in range(1, max_iterations + 1):  # noqa: B007 (the count is reported)
        posteriors = model.e_step(priors, errors)
        priors = posteriors.mean(axis=0)
        errors = model.m_step(posteriors)
        new_bound = model.lower_bound(posteriors, priors, errors) / max(len(t), 1)
        if new_bound - bound < tol:
            break
        bound = new_bound
    return DawidSkeneFit(
        task_index=task_index,
        workers=list(worker_index),
        labels=labels,
        posteriors=posteriors,
        priors=priors,
        errors=errors,
        iterations=iterations,
        task_of=t,
        worker_of=w,
        label_of=k,
    )


class _Model:
    """The answers as index arrays, and the EM steps over them."""

    def __init__(self, t: np.ndarray, w: np.ndarray, k: np.ndarray, shape: tuple) -> None:
        self.t, self.w, self.k = t, w, k
        self.n_tasks, self.n_workers, self.n_labels = shape
        # Which (worker, label) a worker ever answered: only those carry a probability (as
        # crowd-kit's confusion rows exist only for answers given), so the floor is not spread
        # over answers never seen.
        self.answered = np.zeros((self.n_workers, self.n_labels), dtype=bool)
        self.answered[w, k] = True

    def majority_shares(self) -> np.ndarray:
        counts = np.bincount(
            self.t * self.n_labels + self.k, minlength=self.n_tasks * self.n_labels
        )
        counts = counts.reshape(self.n_tasks, self.n_labels).astype(float)
        return counts / counts.sum(axis=1, keepdims=True)

    def m_step(self, posteriors: np.ndarray) -> np.ndarray:
        errors = self._sum_by(
            self.w * self.n_labels + self.k, posteriors[self.t], self.n_workers * self.n_labels
        )
        errors = errors.reshape(self.n_workers, self.n_labels, self.n_labels)
        errors = np.where(self.answered[:, :, None], np.maximum(errors, EPS), 0.0)
        return errors / errors.sum(axis=1, keepdims=True)

    def e_step(self, priors: np.ndarray, errors: np.ndarray) -> np.ndarray:
        log_likelihood = np.log(np.maximum(priors, EPS)) + self._sum_by(
            self.t, _log_answered(errors)[self.w, self.k], self.n_tasks
        )
        # Shift each row so its largest value is 0 before exponentiating: products of many
        # probabilities underflow otherwise.
        scaled = np.exp(log_likelihood - log_likelihood.max(axis=1, keepdims=True))
        return scaled / scaled.sum(axis=1, keepdims=True)

    def _sum_by(self, groups: np.ndarray, values: np.ndarray, n_groups: int) -> np.ndarray:
        """Rows of `values` (answers × labels) summed per group: groups × labels. bincount,
        one label at a time, is several times faster than np.add.at."""
        return np.stack(
            [np.bincount(groups, weights=values[:, c], minlength=n_groups)
             for c in range(self.n_labels)],
            axis=1,
        )  # fmt: skip

    def lower_bound(self, posteriors: np.ndarray, priors: np.ndarray, errors: np.ndarray) -> float:
        """crowd-kit's evidence lower bound: the expected log joint of every answer (its prior
        counted once per answer, as crowd-kit does) plus the posteriors' entropy."""
        per_answer = _log_answered(errors)[self.w, self.k] + np.log(np.maximum(priors, EPS))
        joint = float((posteriors[self.t] * per_answer).sum())
        floored = np.maximum(posteriors, EPS)
        return joint - float((floored * np.log(floored)).sum())


def _log_answered(errors: np.ndarray) -> np.ndarray:
    """The log of every confusion entry, taken on the small workers × labels × labels array
    before it is spread over the answers; entries for answers never given (0) stay 0 here and
    are never read."""
    return np.log(np.where(errors > 0, errors, 1.0))
