"""Batches produced ahead on a background thread: the same items in the same order, errors raised here."""

from __future__ import annotations

import threading

import pytest
import torch

from workers.prefetch import prefetched


def test_the_same_items_in_the_same_order_as_the_plain_iterator():
    def draws(seed: int):
        g = torch.Generator().manual_seed(seed)
        for _ in range(20):
            yield torch.rand(3, generator=g)

    plain, ahead = list(draws(1)), list(prefetched(draws(1), depth=3))
    assert len(plain) == len(ahead) == 20 and all(torch.equal(a, b) for a, b in zip(plain, ahead, strict=True))


def test_an_error_of_the_source_is_raised_to_the_consumer_after_its_items():
    def failing():
        yield 1
        yield 2
        raise ValueError("row 3 is not a PNG")

    got = []
    with pytest.raises(ValueError, match="row 3 is not a PNG"):
        for item in prefetched(failing()):
            got.append(item)
    assert got == [1, 2]


def test_leaving_early_stops_the_producer():
    produced = []

    def endless():
        i = 0
        while True:
            produced.append(i)
            yield i
            i += 1

    before = threading.active_count()
    for item in prefetched(endless(), depth=2):
        if item == 3:
            break
    assert threading.active_count() == before
    assert len(produced) <= 3 + 1 + 2 + 1  # at most depth (+ the one in hand) beyond what was taken
