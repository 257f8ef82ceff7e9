"""The registries: one name → one object, from decorators or from installed entry points.

:class:`Registry` is the one pattern for everything pluggable (datasets, classifiers, purifiers). Objects
come from a decorator in code or from an installed package's entry points
(``[project.entry-points."benchbench.<kind>s"]``), which are loaded only when their name is first asked for,
so a broken or heavy plugin costs nothing until used. An unknown name gets one line with the closest known
name and the full list.

The purifier registry lives here too. A purifier plugin is any callable factory (usually a class) whose
keyword parameters are the purifier's user-facing parameters, plus optionally the harness-provided
``device``, ``dataset`` and ``classifier`` (the loaded base classifier: images in [0, 1] → logits). It
returns an object satisfying :class:`Purifier`. Third-party packages expose factories through the
entry-point group ``benchbench.purifiers``; benchbench's own built-ins are declared the same way in its
pyproject.toml.
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
import os
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Callable, Generic, Protocol, Sequence, TypeVar, runtime_checkable

import torch

from benchbench.errors import BenchError, InvalidArgument, UnknownName, plugin_failure

T = TypeVar("T")


def _qualname(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


class Registry(Generic[T]):
    """Names → objects of one ``kind`` (``dataset``, ``classifier``, ``purifier``), from decorators and from
    the entry-point ``group``."""

    def __init__(self, kind: str, group: str):
        self.kind = kind
        self.group = group
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator registering an object under ``name``; another object under a taken name is an error
        (registering the same object again is not)."""

        def decorate(obj: T) -> T:
            existing = self._items.get(name)
            if existing is not None and existing is not obj:
                raise BenchError(f"{self.kind} name {name!r} is already registered to {_qualname(existing)}")
            self._items[name] = obj
            return obj

        return decorate

    def entry_points(self) -> dict[str, EntryPoint]:
        return {ep.name: ep for ep in entry_points(group=self.group)}

    def names(self, pattern: str = "*") -> list[str]:
        """Sorted names, registered or installed, matching a shell-style ``pattern``."""
        names = set(self._items) | set(self.entry_points())
        return sorted(n for n in names if fnmatch.fnmatch(n, pattern))

    def __contains__(self, name: str) -> bool:
        return name in self._items or name in self.entry_points()

    def get(self, name: str) -> T:
        """The object registered under ``name``, loading its entry point on first use."""
        if name in self._items:
            return self._items[name]
        eps = self.entry_points()
        if name not in eps:
            known = self.names()
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise UnknownName(f"unknown {self.kind} {name!r}{hint} (available: {', '.join(known) or 'none'})")
        try:
            obj = eps[name].load()
        except Exception as exc:  # a broken plugin must not take the harness down with a traceback
            raise BenchError(f"{self.kind} plugin {name!r} ({eps[name].value}) failed to load: {exc}") from exc
        return self.register(name)(obj)


ENTRY_POINT_GROUP = "benchbench.purifiers"

# Keyword arguments the harness fills in itself; they are not user parameters of a purifier.
HARNESS_PARAMS = ("device", "dataset", "classifier")


@runtime_checkable
class Purifier(Protocol):
    """Maps noisy images back towards clean ones.

    ``__call__(x_noisy, sigma)``: x_noisy = x + δ with x in [0, 1] and δ ~ N(0, σ²I), σ in that same
    image scale (a diffusion model working in [-1, 1] sees noise level 2σ); shape (B, C, H, W), float.
    Returns purified images in [0, 1] with the same shape, on the same device (checked by
    :mod:`benchbench.smoothing.contract`).

    ``networks``: every torch module whose forward calls count as network function evaluations (NFE);
    the harness counts NFE by hooking these modules, so a purifier never reports its own NFE.

    Optional class attributes:

    * ``stochastic = True``: the purifier is random and is called as ``__call__(x_noisy, sigma, noise)``
      with a :class:`benchbench.smoothing.noise.CopyNoise` for the batch's rows; it draws all its randomness from
      ``noise`` (never from a generator of its own), so its output for a noisy copy depends on (run seed,
      image, σ, copy) alone, not on batching (nor on the device, with the default ``--noise-device cpu``).
    * ``votes = K`` (default 1): ``__call__`` returns (B·K, C, H, W), rows b·K … b·K+K−1 being K purified
      samples of input b; the harness classifies every row and takes the majority label per input (ties to
      the lowest class).
    * ``output_range = None``: the output is not required to lie in [0, 1] (``identity``).
    * ``fingerprint`` (str): a hash of the weights it loaded, recorded in the run's config.
    """

    networks: Sequence[torch.nn.Module]

    def __call__(self, x_noisy: torch.Tensor, sigma: float, *args: Any) -> torch.Tensor: ...


Factory = Callable[..., Purifier]

PURIFIERS: Registry[Factory] = Registry("purifier", ENTRY_POINT_GROUP)


def register_purifier(name: str) -> Callable[[Factory], Factory]:
    """Decorator that registers a purifier factory under ``name``; registering another one under a taken
    name is an error (re-registering the same object is not)."""
    return PURIFIERS.register(name)


def available_purifiers(pattern: str = "*") -> list[str]:
    """Sorted names of all purifiers, registered or installed, matching a shell-style ``pattern``."""
    return PURIFIERS.names(pattern)


def get_factory(name: str) -> Factory:
    """The factory registered under ``name``, loading its entry point on first use."""
    return PURIFIERS.get(name)


@dataclass(frozen=True)
class Param:
    """One user-facing parameter of a purifier, read from its factory's signature."""

    name: str
    default: Any
    kind: type

    def parse(self, text: str) -> Any:
        """Convert a command-line string to this parameter's type."""
        try:
            if self.kind is bool:
                if text.lower() in ("1", "true", "yes", "on"):
                    return True
                if text.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(text)
            return self.kind(text)
        except ValueError:
            raise InvalidArgument(f"parameter {self.name}={text!r} is not a valid {self.kind.__name__}") from None


def purifier_params(name: str) -> list[Param]:
    """The user-facing parameters of purifier ``name``, in signature order."""
    factory = get_factory(name)
    params = []
    for p in inspect.signature(factory, eval_str=True).parameters.values():
        if p.name in HARNESS_PARAMS or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
            continue
        default = None if p.default is inspect.Parameter.empty else p.default
        kind = _scalar_type(p.annotation, default)
        params.append(Param(p.name, default, kind))
    return params


def _scalar_type(annotation: Any, default: Any) -> type:
    for candidate in (bool, int, float, str):
        if annotation is candidate or (annotation is inspect.Parameter.empty and type(default) is candidate):
            return candidate
    # Optional[...] and unions: take the first scalar member.
    for arg in getattr(annotation, "__args__", ()):
        if arg in (bool, int, float, str):
            return arg
    return str


def describe(name: str) -> str:
    """The first line of the purifier's docstring."""
    doc = inspect.getdoc(get_factory(name)) or ""
    return doc.splitlines()[0] if doc else ""


@dataclass(frozen=True)
class PurifierSpec:
    """A purifier name with the parameters the user set, e.g. ``pfode:steps=10:solver=heun``."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """The row label used in every table: ``name`` or ``name(k=v,...)`` in signature order."""
        if not self.params:
            return self.name
        return f"{self.name}({','.join(f'{k}={v}' for k, v in self.params.items())})"

    @classmethod
    def parse(cls, text: str) -> "PurifierSpec":
        """Parse ``name[:key=value]...``; values are converted to the parameter's declared type."""
        name, *pairs = text.strip().split(":")
        known = {p.name: p for p in purifier_params(name)}  # raises UnknownName for a bad name
        given: dict[str, Any] = {}
        for pair in pairs:
            key, sep, value = pair.partition("=")
            if not sep or not key:
                raise InvalidArgument(f"bad purifier parameter {pair!r} in {text!r}: expected key=value")
            if key not in known:
                accepted = ", ".join(known) or "none"
                raise InvalidArgument(f"purifier {name!r} has no parameter {key!r} (accepted: {accepted})")
            if key in given:  # which one was meant is a guess; the last one silently won
                raise InvalidArgument(f"parameter {key!r} given twice in {text!r}")
            given[key] = known[key].parse(value)
        ordered = {k: given[k] for k in known if k in given}
        spec = cls(name, ordered)
        if any(ch in spec.label for ch in "\t\n\r"):
            raise InvalidArgument(f"purifier spec {text!r} contains a tab or line break")
        return spec

    def canonical(self) -> tuple:
        """What decides the configuration: the name and every parameter with defaults filled in, paths
        that exist resolved (``ckpt//v1`` and ``./ckpt/v1`` are one folder)."""
        values = {p.name: p.default for p in purifier_params(self.name)}
        values.update(self.params)
        for key, value in values.items():
            if isinstance(value, str) and value and os.path.exists(value):
                values[key] = os.path.realpath(value)
        return (self.name, tuple(sorted((k, repr(v)) for k, v in values.items())))


def parse_purifier_list(text: str) -> list[PurifierSpec]:
    """Parse a comma-separated list of purifier specs; ``all`` means every available purifier with its
    defaults."""
    items = [t for t in (s.strip() for s in text.split(",")) if t]
    if not items:
        raise InvalidArgument("no purifier given")
    specs: list[PurifierSpec] = []
    for item in items:
        if item == "all":
            specs.extend(PurifierSpec(n) for n in available_purifiers())
        else:
            specs.append(PurifierSpec.parse(item))
    seen: dict[tuple, str] = {}
    for spec in specs:
        key = spec.canonical()
        if key in seen:
            same = spec.label if seen[key] == spec.label else f"{seen[key]} and {spec.label}"
            raise InvalidArgument(f"purifier listed twice: {same} (the same configuration)")
        seen[key] = spec.label
    return specs


def get_purifier(name: str, **params: Any) -> Purifier:
    """Build purifier ``name`` with ``params`` (user parameters plus optional ``device``/``dataset``) and
    check that the result follows the :class:`Purifier` protocol. A factory that raises is reported as one
    BenchError line naming the purifier."""
    factory = get_factory(name)
    accepted = inspect.signature(factory).parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in accepted.values())
    call = {}
    for key, value in params.items():
        if key in accepted or takes_any:
            call[key] = value
        elif key not in HARNESS_PARAMS:
            names = ", ".join(p.name for p in purifier_params(name)) or "none"
            raise InvalidArgument(f"purifier {name!r} has no parameter {key!r} (accepted: {names})")
    try:
        purifier = factory(**call)
    except BenchError:
        raise
    except (Exception, SystemExit) as exc:  # a plugin's bug: one line naming it, not a traceback
        raise BenchError(f"purifier {name!r} could not be built: {plugin_failure(exc).removeprefix('raised ')}") \
            from exc
    check_protocol(name, purifier)
    return purifier


def check_protocol(name: str, purifier: Any) -> None:
    """Raise BenchError unless ``purifier`` is callable, has ``networks`` (a sequence of torch modules),
    an integer ``votes`` ≥ 1 and a boolean ``stochastic`` when it sets them."""
    if not callable(purifier):
        raise BenchError(f"purifier {name!r} does not follow the Purifier protocol: "
                         f"its factory returned {type(purifier).__name__}, which is not callable")
    networks = getattr(purifier, "networks", None)
    if isinstance(networks, torch.nn.Module) or not isinstance(networks, (list, tuple)) or \
            not all(isinstance(n, torch.nn.Module) for n in networks):
        raise BenchError(f"purifier {name!r} does not follow the Purifier protocol: networks must be a list or "
                         f"tuple of torch modules (empty when it has none), got {networks!r:.60}")
    votes = getattr(purifier, "votes", 1)
    if not isinstance(votes, int) or isinstance(votes, bool) or votes < 1:
        raise BenchError(f"purifier {name!r}: votes must be an integer >= 1, got {votes!r:.60}")
    if not isinstance(getattr(purifier, "stochastic", False), bool):
        raise BenchError(f"purifier {name!r}: stochastic must be True or False")


def purify(purifier: Purifier, x_noisy: torch.Tensor, sigma: float, noise: Any) -> Any:
    """Call ``purifier`` by its contract: with ``noise`` (a :class:`benchbench.smoothing.noise.CopyNoise`) only
    when it declares ``stochastic = True``. Returns whatever it returns (check it with
    :func:`benchbench.smoothing.contract.check_purifier_output`)."""
    if getattr(purifier, "stochastic", False):
        return purifier(x_noisy, sigma, noise)
    return purifier(x_noisy, sigma)
