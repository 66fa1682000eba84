"""WrappedPool: every call, and any other attribute, reaches the pool behind it."""

from __future__ import annotations

from potluck.backends.wrapped import WrappedPool


class RecordingPool:
    """Answers each call with its name and arguments; has an attribute of its own."""

    workers = 3

    def __init__(self) -> None:
        self.closed = False

    def node_ids(self):
        return ["a", "b"]

    def fit(self, instructions, timeout):
        return iter([("fit", tuple(instructions), timeout)])

    def evaluate(self, instructions, timeout):
        return iter([("evaluate", tuple(instructions), timeout)])

    def exchange(self, step, payloads, timeout):
        return iter([("exchange", step, dict(payloads), timeout)])

    def wait_for_nodes(self, count, timeout):
        return (count, timeout) == (2, 1.5)

    def close(self):
        self.closed = True


def test_every_call_and_attribute_passes_through():
    inner = RecordingPool()
    pool = WrappedPool(inner)
    assert pool.node_ids() == ["a", "b"]
    assert list(pool.fit(["i"], 2.0)) == [("fit", ("i",), 2.0)]
    assert list(pool.evaluate(["j"], 3.0)) == [("evaluate", ("j",), 3.0)]
    assert list(pool.exchange("secagg/share", {"a": b"x"}, 4.0)) == [("exchange", "secagg/share", {"a": b"x"}, 4.0)]
    assert pool.wait_for_nodes(2, 1.5)
    assert pool.workers == 3
    pool.close()
    assert inner.closed
