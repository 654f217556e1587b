"""Dawid–Skene (feedback/quality/dawid_skene.py) against crowd-kit's DawidSkene, the maintained
implementation it follows, and on a crowd where it must disagree with the majority."""

import warnings

import numpy as np
import pandas as pd
import pytest
from crowdkit.aggregation import DawidSkene

from feedback.quality.dawid_skene import dawid_skene
from tests.factories import outvoted_answers

LABELS = ("a", "b", "tie", "both_bad")


def random_crowd(seed: int, tasks: int, workers: int, per_task: int) -> list[tuple]:
    """Workers of graded skill; a wrong answer is any label at random."""
    rng = np.random.default_rng(seed)
    answers = []
    for task in range(tasks):
        truth = rng.choice(4, p=[0.4, 0.35, 0.15, 0.1])
        for worker in rng.choice(workers, per_task, replace=False):
            right = rng.random() < 0.3 + 0.6 * worker / workers
            answers.append((task, f"w{worker}", LABELS[truth if right else rng.integers(4)]))
    return answers


@pytest.mark.parametrize(("seed", "tasks", "workers", "per_task"),
                         [(0, 300, 8, 3), (1, 120, 5, 2), (2, 500, 20, 5)])  # fmt: skip
def test_posteriors_priors_and_confusions_equal_crowd_kits(seed, tasks, workers, per_task):
    answers = random_crowd(seed, tasks, workers, per_task)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # crowd-kit 1.4.2 calls APIs pandas 3.1 deprecates
        reference = DawidSkene(n_iter=100).fit(
            pd.DataFrame(answers, columns=["task", "worker", "label"])
        )

    fit = dawid_skene(answers)

    assert fit.iterations == len(reference.loss_history_)
    for task in range(tasks):
        expected = reference.probas_.loc[task]
        assert fit.posterior(task) == pytest.approx(expected.to_dict(), abs=1e-8)
    assert dict(zip(fit.labels, fit.priors, strict=True)) == pytest.approx(
        reference.priors_.to_dict(), abs=1e-12
    )
    # crowd-kit has a confusion row for each label a worker gave: P(gave it | true label).
    for (worker, given), row in reference.errors_.iterrows():
        ours = fit.errors[fit.workers.index(worker), fit.labels.index(given)]
        assert dict(zip(fit.labels, ours, strict=True)) == pytest.approx(row.to_dict(), abs=1e-9)


def test_a_careful_annotator_outweighs_two_careless_ones():
    answers = outvoted_answers()

    fit = dawid_skene(answers)

    assert fit.posterior("x")["a"] > 0.99  # the majority says B
    reliability = fit.reliability()
    assert reliability["careful"][0] > 0.99 and reliability["careful"][1] == 13
    assert reliability["careless1"][0] == pytest.approx(6 / 13, abs=0.01)


def test_reliability_is_the_confusion_diagonal_weighted_by_the_true_labels_answered():
    fit = dawid_skene(random_crowd(3, 200, 6, 3))
    for i, worker in enumerate(fit.workers):
        mine = fit.worker_of == i
        true_mix = fit.posteriors[fit.task_of[mine]].sum(axis=0)
        diagonal = np.array([fit.errors[i, c, c] for c in range(len(fit.labels))])
        expected = float((true_mix * diagonal).sum() / mine.sum())
        assert fit.reliability()[worker][0] == pytest.approx(expected, abs=1e-9)


def test_no_answers_fit_to_nothing_and_one_answer_is_believed():
    empty = dawid_skene([])
    assert (empty.iterations, empty.posterior(1), empty.reliability()) == (0, {}, {})
    single = dawid_skene([(1, "alone", "tie")])
    assert single.posterior(1) == {"tie": 1.0} and single.posterior(2) == {}
