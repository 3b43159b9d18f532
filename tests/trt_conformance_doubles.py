"""Test doubles of a TensorRT module, derived from the REAL bindings of one release (no hand-written API).

`make_module(real_trt, world)` stands in for `import tensorrt`:
- enums and flags, `Dims`, `nptype`, `__version__` and the Python-subclassable bases (ILogger, IProfiler,
  IProgressMonitor, the IInt8 calibrators) are the real objects of that release;
- every other class (Builder, INetworkDefinition, IBuilderConfig, ICudaEngine, ...) is a `Double`: its attributes are
  exactly the real class's pybind properties and methods. Reading or setting anything else raises AttributeError, a
  read-only property cannot be set, a value set must have the property's type, and each call is matched against the
  signatures in the method's pybind docstring (overloads included): argument count, keyword names, argument types.
  A call returns what the `world` scripts for it (checked against the declared return type) or a default of the
  declared return type (a Double for a TensorRT class).
- a name the real module lacks raises AttributeError;
- lifetimes follow the rules the docstrings state: a Python callback handed to TensorRT (logger, calibrator, progress
  monitor, profiler) is held weakly and must outlive every double that uses it (`world.violations`).
Every access is recorded (`world.used`), which is what the attribute table in docs/tensorrt-api.md is made from.
"""

from __future__ import annotations

import re
import types
import weakref

_PREFIX = re.compile(r"\btensorrt(?:_bindings)?\.tensorrt\.|\btensorrt_bindings\.|\btensorrt\.")
# the classes that stay real: no native factory behind them (enums are detected by `__members__`)
REAL_CLASSES = {
    "Dims",
    "Dims2",
    "Dims3",
    "Dims4",
    "DimsHW",
    "ILogger",
    "Logger",
    "IProfiler",
    "IProgressMonitor",
    "IInt8Calibrator",
    "IInt8EntropyCalibrator",
    "IInt8EntropyCalibrator2",
    "IInt8MinMaxCalibrator",
    "IInt8LegacyCalibrator",
}


def _release(module) -> str:
    """The release of the real bindings behind a double module (read without recording it as a use)."""
    return getattr(module, "__real__", module).__version__


class ConformanceError(AssertionError):
    """A use of the TensorRT API that the real bindings of this release would refuse."""


# ---------------------------------------------------------------- signatures from pybind docstrings


def _split_top(text: str, sep: str = ",") -> list[str]:
    parts, depth, cur, quote = [], 0, [], None
    for ch in text:
        if quote:
            cur.append(ch)
            if ch == quote:
                quote = None
            continue
        if ch in "'\"":
            quote = ch
        elif ch in "([{<":
            depth += 1
        elif ch in ")]}>":
            depth -= 1
        if ch == sep and depth == 0:
            parts.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    if "".join(cur).strip():
        parts.append("".join(cur).strip())
    return parts


class Param:
    def __init__(self, text: str):
        head, _, default = text.partition("=")
        name, _, typ = head.partition(":")
        self.name, self.type, self.optional = name.strip(), clean_type(typ), bool(default.strip())
        self.keyword = not re.fullmatch(r"arg\d+", self.name)  # pybind names unnamed arguments arg0, arg1, ...


class Signature:
    def __init__(self, text: str):
        text = text.strip()
        m = re.match(r"^(\w*)\((.*)\)\s*->\s*(.+)$", text)
        if not m:
            raise ValueError(f"unparsable signature {text!r}")
        self.name, self.ret = m.group(1), clean_type(m.group(3))
        params = [Param(p) for p in _split_top(m.group(2))]
        self.params = params[1:] if params and params[0].name in ("self", "arg0") else params
        self.text = _PREFIX.sub("", text)

    def bind(self, args: tuple, kwargs: dict, module) -> str | None:
        """None if the call matches, else why not."""
        if len(args) > len(self.params):
            return f"{len(args)} positional arguments, takes at most {len(self.params)}"
        given = {p.name: a for p, a in zip(self.params, args)}
        for key, value in kwargs.items():
            match = [p for p in self.params if p.name == key]
            if not match or not match[0].keyword:
                return f"no keyword argument {key!r}"
            if key in given:
                return f"{key!r} given twice"
            given[key] = value
        for p in self.params:
            if p.name not in given:
                if not p.optional:
                    return f"missing argument {p.name!r}"
                continue
            problem = conforms(given[p.name], p.type, module)
            if problem:
                return f"argument {p.name!r}: {problem}"
        return None


def clean_type(text: str) -> str:
    text = _PREFIX.sub("", text.strip()).replace("typing.", "")
    # a C++ type pybind had no Python name for when it wrote the docstring (8.6: nvinfer1::IEngineInspector)
    m = re.fullmatch(r"(?:nvinfer1|nvonnxparser)::(\w+)", text)
    return m.group(1) if m else text


def _real_type(module, typ: str):
    """The bindings class named `typ` (IEngineInspector is bound as EngineInspector, IParserError as ParserError)."""
    found = getattr(module, typ, None)
    if found is None and typ.startswith("I") and typ[1:2].isupper():
        found = getattr(module, typ[1:], None)
    return found if isinstance(found, type) else None


def signatures(func) -> list[Signature]:
    doc = getattr(func, "__doc__", None) or ""
    lines = doc.strip().splitlines()
    if not lines:
        return []
    if any(line.strip() == "Overloaded function." for line in lines[:3]):
        return [Signature(m.group(1)) for m in re.finditer(r"^\d+\.\s+(\w+\(.*\)\s*->\s*.+)$", doc, re.M)]
    return [Signature(lines[0])]


def property_types(prop: property) -> tuple[str, str | None]:
    """(type read, type written or None when read-only) of a pybind property."""
    get = Signature("get" + (prop.fget.__doc__ or "").strip().splitlines()[0]) if prop.fget else None
    put = None
    if prop.fset is not None:
        put_sig = Signature("set" + (prop.fset.__doc__ or "").strip().splitlines()[0])
        put = put_sig.params[0].type if put_sig.params else "object"
    return (get.ret if get else "object"), put


# ---------------------------------------------------------------- type conformance


def _is_int(value) -> bool:
    if isinstance(value, bool):
        return True  # pybind's int caster takes a bool (an int subclass)
    if isinstance(value, int):
        return True
    if isinstance(value, float):
        return False
    return hasattr(value, "__index__") or hasattr(value, "__int__")  # pybind converts through __int__


def conforms(value, typ: str, module) -> str | None:
    """None when pybind would accept `value` for a parameter declared `typ`, else why not."""
    module = getattr(module, "__real__", module)  # the real bindings module, never the recording double
    typ = typ.strip()
    if typ in ("object", "capsule", "Any", "handle", "args", "kwargs"):
        return None
    m = re.fullmatch(r"(?:Optional)\[(.+)\]", typ)
    if m:
        return None if value is None else conforms(value, m.group(1), module)
    if " | " in typ:
        options = [t.strip() for t in typ.split(" | ")]
        return None if any(conforms(value, t, module) is None for t in options) else f"{value!r} is not {typ}"
    m = re.fullmatch(r"(?:List|list|Sequence|Iterable)\[(.+)\]", typ)
    if m:
        if not isinstance(value, (list, tuple)):
            return f"expected a list of {m.group(1)}, got {type(value).__name__}"
        for item in value:
            problem = conforms(item, m.group(1), module)
            if problem:
                return problem
        return None
    if typ in ("int", "SupportsInt"):
        return None if _is_int(value) else f"expected int, got {type(value).__name__}"
    if typ in ("float", "SupportsFloat"):
        return None if _is_int(value) or isinstance(value, float) else f"expected float, got {type(value).__name__}"
    if typ == "bool":
        return None if isinstance(value, bool) or type(value).__name__ == "bool_" else f"expected bool, got {value!r}"
    if typ == "str":
        return None if isinstance(value, str) else f"expected str, got {type(value).__name__}"
    if typ == "None":
        return None if value is None else f"expected None, got {type(value).__name__}"
    if typ in ("buffer", "bytes", "numpy.ndarray", "Buffer"):
        ok = isinstance(value, (bytes, bytearray, memoryview)) or type(value).__name__ == "ndarray"
        ok = ok or (isinstance(value, Double) and value._real_name == "IHostMemory")
        return None if ok else f"expected a buffer, got {type(value).__name__}"
    real = _real_type(module, typ)
    if real is None:
        return None  # a C++ type without a Python name: pybind checks it, we cannot
    if value is None:
        return None  # pybind passes None as a null pointer for class arguments
    if hasattr(real, "__members__"):
        return None if isinstance(value, real) else f"expected {typ}, got {value!r}"
    if typ.startswith("Dims") and isinstance(value, (list, tuple)):  # pybind's implicit conversion
        return None if all(_is_int(v) for v in value) else f"expected {typ} (ints), got {value!r}"
    if isinstance(value, Double):
        return None if issubclass(value._real, real) else f"expected {typ}, got a {value._real_name}"
    return None if isinstance(value, real) else f"expected {typ}, got {type(value).__name__}"


# ---------------------------------------------------------------- the world: scripted behaviour + usage record


class World:
    """What the doubles return (`script['Class.member'] = value or callable(double, *args)`) and what was used."""

    def __init__(self, real):
        self.real = real
        self.script: dict[str, object] = {}
        self.used: set[str] = set()
        self.calls: list[tuple[str, tuple, dict]] = []
        self.violations: list[str] = []  # lifetime rules broken (found when a double is finalized)

    def on(self, key: str, value) -> None:
        cls, _, member = key.partition(".")
        real_cls = getattr(self.real, cls, None)
        if real_cls is None or (member != "__init__" and member not in _members(real_cls)):
            raise ConformanceError(f"the test scripts {key}, which TensorRT {self.real.__version__} does not have")
        self.script[key] = value

    def lookup(self, cls: type, member: str):
        for klass in cls.__mro__:
            key = f"{klass.__name__}.{member}"
            if key in self.script:
                return key
        return None

    def count(self, key: str) -> int:
        return sum(1 for name, _, _ in self.calls if name == key)


def _members(cls: type) -> dict:
    out = {}
    for klass in reversed(cls.__mro__):
        if klass is object or klass.__name__ == "pybind11_object":
            continue
        out.update({k: v for k, v in vars(klass).items() if not k.startswith("__")})
    return out


class Double:
    """An object standing in for an instance of the real class `_real` (see the module docstring)."""

    def __init__(self, real_cls: type, world: World, module, **values):
        object.__setattr__(self, "_real", real_cls)
        object.__setattr__(self, "_real_name", real_cls.__name__)
        object.__setattr__(self, "_world", world)
        object.__setattr__(self, "_module", module)
        object.__setattr__(self, "_values", {})
        object.__setattr__(self, "state", {})  # free space for the world's scripts
        for key, value in values.items():
            self._check_set(key, value)
            self._values[key] = value

    def __repr__(self):
        return f"<double of tensorrt.{self._real_name}>"

    def _fail(self, text: str):
        raise AttributeError(f"TensorRT {_release(self._module)}: {self._real_name}.{text}")

    def _check_set(self, name: str, value):
        member = _members(self._real).get(name)
        if not isinstance(member, property):
            self._fail(f"{name} does not exist" if member is None else f"{name} is a method, not a property")
        _, put = property_types(member)
        if put is None:
            self._fail(f"{name} is read-only")
        problem = conforms(value, put, self._module)
        if problem:
            raise TypeError(f"TensorRT {_release(self._module)}: {self._real_name}.{name} = {value!r}: {problem}")

    def __setattr__(self, name, value):
        self._check_set(name, value)
        self._world.used.add(f"{self._real_name}.{name}")
        self._world.calls.append((f"{self._real_name}.{name}=", _unheld((value,)), {}))
        if isinstance(value, _callback_bases(self._module)):
            # TensorRT does not own Python callbacks ("the lifetime of the IProgressMonitor must exceed the lifetime
            # of all TensorRT objects that use it"): held weakly, and checked alive when this object goes
            ref = weakref.ref(value)
            weakref.finalize(self, _outlived, self._world, ref, f"{self._real_name}.{name}")
            value = _Weak(ref, f"{self._real_name}.{name}")
        self._values[name] = value

    def _depends_on(self, ref, what: str) -> None:
        """`ref` (a Python callback) must outlive this object and every object made through it."""
        self.state.setdefault("_depends", []).append((ref, what))
        weakref.finalize(self, _outlived, self._world, ref, what)

    def value(self, name: str):
        """What was set as `name` (None if nothing), for the tests' scripts: a callback that died raises."""
        value = self._values.get(name)
        return value.get() if isinstance(value, _Weak) else value

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        member = _members(self._real).get(name)
        if member is None:
            self._fail(f"{name} does not exist")
        self._world.used.add(f"{self._real_name}.{name}")
        if isinstance(member, property):
            if name in self._values:
                return self.value(name)
            key = self._world.lookup(self._real, name)
            typ = property_types(member)[0]
            if key:
                value = self._world.script[key]
                value = value(self) if callable(value) else value
                _check_return(value, typ, f"{self._real_name}.{name}", self._module)
                return value
            return default_value(typ, self._world, self._module)
        if hasattr(member, "__members__") or isinstance(member, type):
            return member  # a nested enum
        sigs = signatures(member)
        if not sigs:
            self._fail(f"{name} has no signature to check against")
        return _BoundDouble(self, name, sigs)

    def __bytes__(self):
        if "buffer protocol" not in (self._real.__doc__ or ""):
            raise TypeError(f"TensorRT {_release(self._module)}: bytes() of a {self._real_name} (no buffer protocol)")
        return bytes(self.state.get("bytes", b""))


def _callback_bases(module) -> tuple:
    real = getattr(module, "__real__", module)
    names = ("ILogger", "IProfiler", "IProgressMonitor", "IInt8Calibrator")
    return tuple(getattr(real, n) for n in names if hasattr(real, n))


class _Weak:
    def __init__(self, ref, what: str):
        self.ref, self.what = ref, what

    def get(self):
        value = self.ref()
        if value is None:
            raise ConformanceError(f"{self.what} was destroyed while TensorRT still uses it")
        return value


def _outlived(world: "World", ref, what: str) -> None:
    if ref() is None:
        world.violations.append(f"{what} was destroyed before a TensorRT object using it")


class _BoundDouble:
    def __init__(self, owner: Double, name: str, sigs: list[Signature]):
        self.owner, self.name, self.sigs = owner, name, sigs

    def __call__(self, *args, **kwargs):
        owner, module = self.owner, self.owner._module
        problems = []
        for sig in self.sigs:
            problem = sig.bind(args, kwargs, module)
            if problem is None:
                break
            problems.append(f"{sig.text}: {problem}")
        else:
            raise TypeError(
                f"TensorRT {_release(module)}: {owner._real_name}.{self.name}{_fmt_call(args, kwargs)} matches no "
                "signature: " + " | ".join(problems)
            )
        world = owner._world
        world.calls.append((f"{owner._real_name}.{self.name}", _unheld(args), _unheld(kwargs)))
        key = world.lookup(owner._real, self.name)
        if key is None:
            return default_value(sig.ret, world, module)
        value = world.script[key]
        value = value(owner, *args, **kwargs) if callable(value) else value
        _check_return(value, sig.ret, f"{owner._real_name}.{self.name}", module)
        if isinstance(value, Double):  # made through `owner`: the same callbacks must outlive it
            for ref, what in owner.state.get("_depends", []):
                value._depends_on(ref, what)
        return value


def _unheld(values):
    """What the call log keeps of the arguments: plain values and enum members as they are, anything else as its
    repr, so logging never extends a lifetime (TensorRT's documented lifetime rules are part of what is checked)."""

    def keep(v):
        plain = v is None or isinstance(v, (bool, int, float, str, bytes, tuple))
        return v if plain or hasattr(type(v), "__members__") else repr(v)

    if isinstance(values, dict):
        return {k: keep(v) for k, v in values.items()}
    return tuple(keep(v) for v in values)


def _fmt_call(args, kwargs) -> str:
    return "(" + ", ".join([repr(a) for a in args] + [f"{k}={v!r}" for k, v in kwargs.items()]) + ")"


def _check_return(value, typ: str, where: str, module) -> None:
    problem = conforms(value, typ, module)
    if problem and not (value is None and typ not in ("bool", "int", "float", "str")):
        raise ConformanceError(f"the test's script for {where} returns {value!r}, which is not {typ}: {problem}")


def default_value(typ: str, world: World, module):
    typ = typ.strip()
    simple = {"None": None, "bool": True, "int": 0, "float": 0.0, "str": "", "buffer": b""}
    if typ in simple:
        return simple[typ]
    if re.fullmatch(r"(?:List|list)\[.+\]", typ):
        return []
    real = _real_type(module.__real__, typ)
    if real is None:
        raise ConformanceError(f"no default for the return type {typ!r}: the test must script it")
    if hasattr(real, "__members__"):
        return list(real.__members__.values())[0]
    if typ.startswith("Dims"):
        return real([])
    return Double(real, world, module)


# ---------------------------------------------------------------- the module


class _RecordingEnum:
    """A module-level enum, recording which members are read (the real members are returned)."""

    def __init__(self, name: str, real, world: World):
        self._name, self._real, self._world = name, real, world

    def __getattr__(self, member):
        value = getattr(self._real, member)  # AttributeError for a member this release lacks
        self._world.used.add(f"{self._name}.{member}")
        return value

    def __call__(self, *args):
        return self._real(*args)


class _DoubleClass:
    """`trt.Builder(logger)` and friends: the constructor checked against the real `__init__` signatures."""

    def __init__(self, real_cls: type, world: World, module):
        self._real, self._world, self._module = real_cls, world, module

    def __call__(self, *args, **kwargs):
        sigs = signatures(self._real.__init__)
        name = self._real.__name__
        if not sigs:
            raise TypeError(f"TensorRT {_release(self._module)}: {name} has no Python constructor")
        problems = [f"{s.text}: {p}" for s in sigs if (p := s.bind(args, kwargs, self._module))]
        if len(problems) == len(sigs):
            raise TypeError(f"TensorRT {_release(self._module)}: {name}{_fmt_call(args, kwargs)}: {problems}")
        self._world.calls.append((f"{name}()", _unheld(args), _unheld(kwargs)))
        key = f"{name}.__init__"
        made = self._world.script.get(key)
        obj = made(*args, **kwargs) if made else Double(self._real, self._world, self._module)
        for arg in list(args) + list(kwargs.values()):  # the logger: "valid until all objects created are released"
            if isinstance(arg, _callback_bases(self._module)):
                obj._depends_on(weakref.ref(arg), f"the {type(arg).__name__} given to {name}()")
        return obj

    def __getattr__(self, member):
        value = getattr(self._real, member)
        self._world.used.add(f"{self._real.__name__}.{member}")
        return value


def make_module(real, world: World) -> types.ModuleType:
    """The double `tensorrt` module for the real bindings module `real`."""

    class DoubleModule(types.ModuleType):
        def __getattr__(self, name):
            if name.startswith("__") and name not in ("__version__",):
                raise AttributeError(name)
            try:
                value = getattr(real, name)
            except AttributeError:
                raise AttributeError(f"TensorRT {real.__version__} has no tensorrt.{name}") from None
            world.used.add(f"tensorrt.{name}")
            if isinstance(value, type) and hasattr(value, "__members__"):
                return _RecordingEnum(name, value, world)
            if isinstance(value, type) and name not in REAL_CLASSES and type(value).__name__ == "pybind11_type":
                return _DoubleClass(value, world, self)
            return value

    module = DoubleModule("tensorrt")
    module.__real__ = real
    return module


# the pure virtual methods TensorRT calls on a Python subclass (TensorRT API docs of each interface)
CALLBACKS = {
    "ILogger": ("log",),
    "IProfiler": ("report_layer_time",),
    "IProgressMonitor": ("phase_start", "step_complete", "phase_finish"),
    "IInt8Calibrator": ("get_batch_size", "get_batch", "read_calibration_cache", "write_calibration_cache"),
}


def check_override(base: type, sub: type) -> list[str]:
    """Problems with `sub`'s overrides of the real callback base `base`: each callback TensorRT calls must be a
    method of `base` that `sub` defines with the same arguments, and no method of `sub` may be a near-miss of a
    `base` method's name (a misspelt override is never called)."""
    import difflib
    import inspect

    problems = []
    required = next((names for klass in base.__mro__ for key, names in CALLBACKS.items() if klass.__name__ == key), ())
    base_methods = {n for n in dir(base) if not n.startswith("_") and callable(getattr(base, n))}
    for name in required:
        if name not in base_methods:
            problems.append(f"{base.__name__} has no {name} in this release")
        elif name not in vars(sub):
            problems.append(f"{sub.__name__} does not define {name}, which TensorRT calls")
    for name, func in vars(sub).items():
        if name.startswith("_") or not callable(func):
            continue
        if name in base_methods:
            want = [p.name for p in signatures(getattr(base, name))[0].params]
            have = list(inspect.signature(func).parameters)[1:]
            if len(want) != len(have):
                problems.append(f"{sub.__name__}.{name}{tuple(have)}: TensorRT calls it with {tuple(want)}")
        else:
            close = difflib.get_close_matches(name, sorted(base_methods), n=1, cutoff=0.8)
            if close:
                problems.append(f"{sub.__name__}.{name}: not a {base.__name__} method (did you mean {close[0]}?)")
    return problems
