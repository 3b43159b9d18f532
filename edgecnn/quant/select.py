"""Which layers stay in float, and why: exact node names, regular expressions over node names, op types (as the
peers offer it: ModelOpt's op_types_to_exclude / nodes_to_exclude, ORT's nodes_to_exclude). Every excluded node is
reported with the option that excluded it; the accuracy gate adds its own with the sensitivity that chose them."""

from __future__ import annotations

import difflib
import re

from edgecnn.errors import UserInputError


def resolve(prepared, original, names=(), patterns=(), op_types=()) -> list[dict]:
    """[{node, op, reason}] in graph order for every node the three selections name; a selection that names nothing
    is an error that shows what the graph does contain."""
    nodes = [(n.name, n.op_type) for n in prepared.graph.node]
    known = {name for name, _ in nodes}
    reasons: dict[str, str] = {}
    _check_names(names, known, original)
    for name in names:
        reasons.setdefault(name, f"--exclude {name}")
    for pattern in patterns:
        try:
            rx = re.compile(pattern)
        except re.error as exc:
            raise UserInputError(f"--exclude-pattern {pattern!r} is not a regular expression: {exc}") from None
        hits = [name for name, _ in nodes if rx.search(name)]
        if not hits:
            raise UserInputError(
                f"--exclude-pattern {pattern!r} matches no node name; names look like: {_sample(known)}, ..."
            )
        for name in hits:
            reasons.setdefault(name, f"--exclude-pattern {pattern}")
    present = sorted({op for _, op in nodes})
    for op_type in op_types:
        hits = [name for name, op in nodes if op == op_type]
        if not hits:
            raise UserInputError(
                f"--exclude-op-type {op_type}: the model has no {op_type} node (op types: {', '.join(present)})"
            )
        for name in hits:
            reasons.setdefault(name, f"--exclude-op-type {op_type}")
    ops = dict(nodes)
    return [{"node": name, "op": ops[name], "reason": reasons[name]} for name, _ in nodes if name in reasons]


def _sample(names) -> str:
    return ", ".join(sorted(names)[:6])


def _check_names(names, known: set[str], original) -> None:
    unknown = [n for n in names if n not in known]
    if not unknown:
        return
    hints = []
    for n in unknown[:3]:
        close = difflib.get_close_matches(n, sorted(known), n=3, cutoff=0.5)
        if close:
            hints.append(f"{n} -> did you mean {', '.join(close)}?")
    gone = [n for n in unknown if n in {node.name for node in original.graph.node}]
    extra = f" ({', '.join(gone)} folded away by graph optimisation)" if gone else ""
    raise UserInputError(
        f"Unknown --exclude node(s): {', '.join(unknown)}{extra}. "
        + (" ".join(hints) or f"Node names look like: {_sample(known)}, ...")
    )
