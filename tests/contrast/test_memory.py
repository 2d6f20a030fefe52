"""ClassQueue's fixed-shape entry points (Contextrast++'s anchor memory), by hand."""

import pytest
import torch

from contextrast.contrast import ClassQueue


def test_push_rows_is_a_fifo_per_class_and_padded_marks_empty_slots():
    queue = ClassQueue(num_classes=3, size=2, dim=1)
    keys, labels = queue.padded()
    assert keys.shape == (6, 1) and labels.tolist() == [-1] * 6
    present = torch.tensor([True, False, True])
    for value in (1.0, 2.0, 3.0):  # class 0 and 2 get three pushes, class 1 none
        queue.push_rows(torch.full((3, 1), value), present)
    keys, labels = queue.padded()
    # size 2: the third push overwrote the first (slot 0), the second stays in slot 1
    assert keys.flatten().tolist() == [3.0, 2.0, 0.0, 0.0, 3.0, 2.0]
    assert labels.tolist() == [0, 0, -1, -1, 2, 2]
    assert queue.count.tolist() == [2, 0, 2] and queue.pointer.tolist() == [1, 0, 1]
    # the variable-size view agrees
    stored, classes = queue.contents()
    assert stored.flatten().tolist() == [3.0, 2.0, 3.0, 2.0] and classes.tolist() == [0, 0, 2, 2]


def test_push_rows_skips_non_finite_rows_and_checks_its_shapes():
    queue = ClassQueue(num_classes=3, size=2, dim=2)
    keys = torch.tensor([[1.0, 0.0], [float("nan"), 0.0], [0.0, float("inf")]])
    queue.push_rows(keys, torch.tensor([True, True, True]))
    assert queue.count.tolist() == [1, 0, 0] and torch.isfinite(queue.keys).all()
    for bad_keys, bad_present, message in (
        (torch.zeros(2, 2), torch.ones(3, dtype=torch.bool), r"keys must have shape \(N, D\)"),
        (torch.zeros(3, 1), torch.ones(3, dtype=torch.bool), r"= \(3, 2\), got \(3, 1\)"),
        (torch.zeros(3, 2), torch.ones(3), r"present must be a bool tensor of shape \(3,\)"),
        (torch.zeros(3, 2), torch.ones(2, dtype=torch.bool), r"got torch.bool \(2,\)"),
    ):
        with pytest.raises(ValueError, match=message):
            queue.push_rows(bad_keys, bad_present)
