"""The error tree: drawn whole in core/errors.py's docstring, one name per class, and
the difference between a node that left and one that broke."""

from __future__ import annotations

import re

import pytest

from error_kit import all_error_classes
from potluck.core import errors
from potluck.core.errors import NodeError, NodeFailed, NodeLeft, NodeResultInvalid, NodeTimedOut, UnexpectedResult

CLASSES = all_error_classes()


def drawn_tree() -> dict[str, str]:
    """{class name: parent name} as the docstring draws them (the connector's column is the depth)."""
    drawing = (errors.__doc__ or "").split("::", 1)[1]
    stack: list[tuple[int, str]] = [(-1, "PotluckError")]
    parents = {}
    for line in drawing.splitlines():
        m = re.match(r"^([ │]*)[├└]── ([A-Z][A-Za-z]+)\b", line)
        if m is None:
            continue
        column = len(m.group(1))
        while stack[-1][0] >= column:
            stack.pop()
        parents[m.group(2)] = stack[-1][1]
        stack.append((column, m.group(2)))
    return parents


def test_the_walk_finds_the_classes_defined_outside_core():
    modules = {cls.__name__: cls.__module__ for cls in CLASSES}
    assert modules["WireError"] == "potluck.transport.convert"
    assert modules["LedgerMismatch"] == "potluck.ledger.watch"
    assert modules["CertificateError"] == "potluck.transport.tls_files"


def test_the_drawing_is_read_as_a_tree():
    tree = drawn_tree()
    assert tree["ConfigError"] == "PotluckError" and tree["NodeResultInvalid"] == "NodeFailed"
    assert tree["NodeLeft"] == "NodeError" and tree["LedgerMismatch"] == "LedgerError"


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_the_docstring_draws_every_class_under_its_parent(cls):
    tree = drawn_tree()
    assert cls.__name__ in tree, f"{cls.__name__} ({cls.__module__}) is missing from the tree in core/errors.py"
    assert tree[cls.__name__] == cls.__bases__[0].__name__, f"{cls.__name__} is drawn under the wrong parent"


def test_the_drawing_holds_no_class_that_does_not_exist():
    assert set(drawn_tree()) == {cls.__name__ for cls in CLASSES}


def test_names_are_unique_because_the_wire_carries_them():
    names = [cls.__name__ for cls in CLASSES]
    assert len(names) == len(set(names))


def test_every_class_says_what_it_means():
    for cls in CLASSES:
        assert cls.__doc__ and len(cls.__doc__.strip()) > 20, f"{cls.__name__} has no docstring of its own"


def test_a_node_that_left_is_not_one_that_broke():
    assert not issubclass(NodeLeft, NodeFailed) and not issubclass(NodeTimedOut, NodeFailed)
    assert issubclass(NodeResultInvalid, NodeFailed)  # a refused result is the node's fault
    assert not issubclass(UnexpectedResult, NodeError)  # a late result is not a failed node


def test_node_errors_name_the_node_and_survive_pickling():
    import pickle

    for cls in (NodeFailed, NodeResultInvalid, NodeTimedOut, NodeLeft):
        back = pickle.loads(pickle.dumps(cls("node-7", "gone")))
        assert type(back) is cls and (back.node_id, back.reason, str(back)) == ("node-7", "gone", "node node-7: gone")
