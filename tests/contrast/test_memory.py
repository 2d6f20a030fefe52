"""ClassQueue's fixed-shape entry points (Contextrast++'s anchor memory), by hand."""

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
