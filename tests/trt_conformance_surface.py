"""A release's API surface and deprecations, read from its bindings (for the table in docs/tensorrt-api.md)."""

from __future__ import annotations

import re


def surface(real) -> dict:
    """Every public class of the release with its members, every enum with its members (for the table)."""
    out = {"__version__": None}
    for name in dir(real):
        if name.startswith("_"):
            continue
        value = getattr(real, name)
        if isinstance(value, type):
            members = set(getattr(value, "__members__", {}))
            for klass in value.__mro__:
                members |= {k for k in vars(klass) if not k.startswith("__")}
            out[name] = sorted(members)
        else:
            out[name] = None
    return out


def _deprecation(text: str) -> str | None:
    """'deprecated in X' when `text` (a docstring paragraph) starts a line with [DEPRECATED], else None (a mention
    of another, deprecated API inside the text does not count)."""
    if not re.match(r"\s*(?::class:`[^`]*`\s*)?\[DEPRECATED\]", text) and not re.search(r"\n\s*\[DEPRECATED\]", text):
        return None
    m = re.search(r"Deprecated in TensorRT (\d+(?:\.\d+)*)", text)
    return f"deprecated in {m.group(1)}" if m else "deprecated"


def deprecations(real, names: list[str]) -> dict[str, str]:
    """Which of `names` ('tensorrt.X', 'Class.member') the release's docstrings mark [DEPRECATED]."""
    out = {}
    for name in names:
        owner, _, member = name.partition(".")
        note = None
        if owner == "tensorrt":
            value = getattr(real, member, None)
            doc = (getattr(value, "__doc__", "") or "") if isinstance(value, type) else ""
            note = _deprecation("\n".join(doc.strip().splitlines()[:3]))
        else:
            cls = getattr(real, owner, None)
            if cls is None or not hasattr(cls, member):
                continue
            if hasattr(cls, "__members__"):  # an enum: the member's paragraph under "Members:"
                m = re.search(rf"^\s+{re.escape(member)} :(.*?)(?=^\s+\w+ :|\Z)", cls.__doc__ or "", re.M | re.S)
                note = _deprecation(m.group(1)) if m else None
            elif isinstance(getattr(cls, member), property):  # described by the class docstring's :ivar
                owner_cls = next(k for k in cls.__mro__ if member in vars(k))
                m = re.search(rf":ivar {re.escape(member)}:(.*?)(?=:ivar|\Z)", owner_cls.__doc__ or "", re.S)
                note = _deprecation(m.group(1)) if m else None
            else:  # a method: its own docstring, before the argument list
                text = getattr(getattr(cls, member), "__doc__", "") or ""
                note = _deprecation(text.split(":arg", 1)[0])
        if note:
            out[name] = note
    return out


def deprecation_candidates(real, used: set[str]) -> list[str]:
    """Every module class, every enum member, and every member of each class edgecnn touched (the table shows
    deprecations for attributes used on other releases too)."""
    names = {f"tensorrt.{n}" for n in dir(real) if isinstance(getattr(real, n), type)}
    owners = {name.partition(".")[0] for name in used} | {name[9:] for name in used if name.startswith("tensorrt.")}
    owners |= {n for n in dir(real) if hasattr(getattr(real, n), "__members__")}  # every enum (few members each)
    for owner in owners - {"tensorrt"}:
        cls = getattr(real, owner, None)
        if isinstance(cls, type):
            members = set(getattr(cls, "__members__", {})) | set(dir(cls))
            names |= {f"{owner}.{m}" for m in members if not m.startswith("_")}
    return sorted(names | used)
