import numpy as np
import pytest

from festa.shared.data.partition import (
    assign_tasks,
    dirichlet,
    natural,
    partition,
    partition_table,
    quantity_skew,
)


def _is_partition(parts, n):
    allidx = np.concatenate(parts)
    return len(allidx) == n and len(np.unique(allidx)) == n


def test_natural_groups_by_site():
    parts, names = natural(["b", "a", "b", "c", "a"])
    assert names == ["a", "b", "c"]
    assert [p.tolist() for p in parts] == [[1, 4], [0, 2], [3]]


def test_dirichlet_is_a_seeded_partition_and_skews_with_small_alpha():
    labels = np.repeat(np.arange(3), 200)
    parts = dirichlet(labels, 4, alpha=0.1, seed=1)
    assert _is_partition(parts, 600)
    assert all(
        np.array_equal(a, b) for a, b in zip(parts, dirichlet(labels, 4, 0.1, seed=1), strict=True)
    )

    def skew(ps):  # mean share of each client's majority class
        return np.mean([np.bincount(labels[p], minlength=3).max() / len(p) for p in ps])

    assert skew(parts) > skew(dirichlet(labels, 4, alpha=100.0, seed=1)) + 0.2


def test_quantity_skew_sizes_differ():
    parts = quantity_skew(500, 5, seed=0, alpha=0.5)
    assert _is_partition(parts, 500)
    sizes = sorted(len(p) for p in parts)
    assert sizes[-1] > 2 * sizes[0]


def test_partition_spec_and_errors():
    labels = np.repeat(np.arange(2), 50)
    assert _is_partition(partition("iid", labels, ["s"] * 100, 4), 100)
    with pytest.raises(ValueError, match="unknown partition"):
        partition("bogus", labels, ["s"] * 100, 4)


def test_assign_tasks_round_robin_and_table():
    assert assign_tasks(5, ["classification", "segmentation"]) == [
        "classification",
        "segmentation",
        "classification",
        "segmentation",
        "classification",
    ]
    labels = np.array([0, 1, 1, 2])
    table, rows = partition_table(
        [np.array([0, 1]), np.array([2, 3])],
        labels,
        ["n", "f", "d"],
        ["classification", "segmentation"],
    )
    assert rows[0]["counts"] == {"n": 1, "f": 1, "d": 0} and rows[1]["total"] == 2
    assert table.row_count == 2
