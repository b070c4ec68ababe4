"""Loss registry: choose loss terms by name and combine them as a weighted sum.

A *term* is a small ``nn.Module`` around one pure loss function. It reads what it needs from
three mappings: the student's outputs, the teacher's outputs and the batch, and declares
those keys in :meth:`LossTerm.reads`. The loop needs no per-term knowledge: a loss whose
terms read nothing from the teacher never runs it. Terms with learnable parts (a FitNets
regressor) are modules, so their parameters are trained with the student and checkpointed
with it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from common.errors import ConfigError

T = TypeVar("T")

Outputs = Mapping[str, Any]


class Registry:
    """Name -> factory map. Registering a name twice is an error, never a silent override."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, Callable[..., Any]] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(factory: T) -> T:
            self.add(name, factory)  # type: ignore[arg-type]
            return factory

        return decorator

    def add(self, name: str, factory: Callable[..., Any]) -> None:
        if name in self._items:
            raise KeyError(
                f"{self.kind} {name!r} is already registered (by {self._items[name]!r}); "
                "pick another name or remove the first registration"
            )
        self._items[name] = factory

    def remove(self, name: str) -> None:
        """Unregister ``name`` (a plugin unloading, or a test cleaning up after itself)."""
        self._items.pop(name)

    def get(self, name: str) -> Callable[..., Any]:
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items)) or "(none)"
            raise ConfigError(f"unknown {self.kind} {name!r}; known: {known}") from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)


LOSSES = Registry("loss")


@dataclass(frozen=True)
class Reads:
    """Output keys a loss term reads from each of the three mappings it is called with."""

    student: frozenset[str] = frozenset()
    teacher: frozenset[str] = frozenset()
    batch: frozenset[str] = frozenset()

    def __or__(self, other: Reads) -> Reads:
        """The keys read by either: the union per mapping."""
        return Reads(
            self.student | other.student, self.teacher | other.teacher, self.batch | other.batch
        )


class LossTerm(nn.Module):
    """One named loss term. Subclasses implement :meth:`forward` and :meth:`reads`."""

    def reads(self) -> Reads:
        """The keys :meth:`forward` reads from the student, teacher and batch mappings."""
        raise NotImplementedError(
            f"{type(self).__name__} must declare what it reads: define reads() returning "
            "Reads(student=..., teacher=..., batch=...) with the keys its forward() looks up "
            "(whether the teacher is run at all depends on it)"
        )

    @property
    def needs_teacher(self) -> bool:
        """Whether the term reads teacher outputs. A run whose terms read none (student
        alone) never runs the teacher."""
        return bool(self.reads().teacher)

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Outputs) -> Tensor:
        raise NotImplementedError


def check_positive(term: str, **values: float) -> None:
    """Refuse an option that must be a positive number (a temperature), naming it."""
    for name, value in values.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
            raise ConfigError(f"{term}: {name} must be a number > 0, e.g. 2.0; got {value!r}")


def require(outputs: Outputs | None, key: str, who: str, term: str) -> Any:
    """Fetch ``outputs[key]`` or raise an error that says which adapter must provide it."""
    if outputs is None:
        raise ConfigError(f"loss {term!r} needs {who} outputs, but none were computed")
    try:
        return outputs[key]
    except KeyError:
        have = ", ".join(sorted(outputs)) or "(nothing)"
        raise ConfigError(
            f"loss {term!r} needs {who} output {key!r}, but the forward adapter returned only: "
            f"{have}. Return {key!r} from the adapter, or point the term at an existing key."
        ) from None


@dataclass
class LossOutput:
    """The weighted total (what is back-propagated) and each unweighted term for logging."""

    total: Tensor
    terms: dict[str, Tensor]

    def as_floats(self) -> dict[str, float]:
        logs = {"loss": float(self.total.detach())}
        logs.update({f"loss/{k}": float(v.detach()) for k, v in self.terms.items()})
        return logs


class CombinedLoss(nn.Module):
    """Weighted sum of registered terms: ``total = sum_i w_i * term_i``."""

    def __init__(self, terms: Mapping[str, LossTerm], weights: Mapping[str, float]) -> None:
        super().__init__()
        if not terms:
            raise ConfigError("a loss needs at least one term, e.g. 'ce=1' or 'kd=0.9,ce=0.1'")
        if set(terms) != set(weights):
            raise ConfigError(f"terms {sorted(terms)} and weights {sorted(weights)} differ")
        self.terms = nn.ModuleDict(dict(terms))
        self.weights = dict(weights)

    def reads(self) -> Reads:
        """The union of the keys every term reads."""
        reads = Reads()
        for term in self.terms.values():
            reads = reads | term.reads()
        return reads

    @property
    def needs_teacher(self) -> bool:
        """Whether any term reads teacher outputs."""
        return bool(self.reads().teacher)

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Outputs) -> LossOutput:
        values: dict[str, Tensor] = {}
        total: Tensor | None = None
        for name, term in self.terms.items():
            value = term(student, teacher, batch)
            values[name] = value
            weighted = self.weights[name] * value
            total = weighted if total is None else total + weighted
        assert total is not None
        return LossOutput(total=total, terms=values)


def parse_loss_spec(spec: str) -> dict[str, float]:
    """Parse ``"kd=0.9,ce=0.1"`` (a bare name means weight 1) into ``{name: weight}``."""
    weights: dict[str, float] = {}
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        name, sep, raw = part.partition("=")
        name = name.strip()
        try:
            weight = float(raw) if sep else 1.0
        except ValueError:
            raise ConfigError(
                f"bad weight {raw!r} for loss {name!r} in {spec!r}; write e.g. 'kd=0.9,ce=0.1'"
            ) from None
        if name in weights:
            raise ConfigError(f"loss {name!r} appears twice in {spec!r}")
        if not torch.isfinite(torch.tensor(weight)):
            raise ConfigError(f"weight of loss {name!r} must be finite, got {weight}")
        weights[name] = weight
    if not weights:
        raise ConfigError(f"empty loss spec {spec!r}; write e.g. 'ce=1' or 'kd=0.9,ce=0.1'")
    return weights


def build_loss(
    weights: Mapping[str, float] | str,
    options: Mapping[str, Mapping[str, Any]] | None = None,
) -> CombinedLoss:
    """Build a :class:`CombinedLoss` from weights (or a spec string) and per-term options.

    ``options[name]`` is passed as keyword arguments to that term's constructor, e.g.
    ``build_loss("kd=0.9,ce=0.1", {"kd": {"temperature": 4.0}})``.
    """
    if isinstance(weights, str):
        weights = parse_loss_spec(weights)
    options = dict(options or {})
    unused = set(options) - set(weights)
    if unused:
        raise ConfigError(f"options given for losses not in the spec: {sorted(unused)}")
    terms: dict[str, LossTerm] = {}
    for name in weights:
        factory = LOSSES.get(name)
        try:
            terms[name] = factory(**dict(options.get(name, {})))
        except ConfigError:
            raise
        except (TypeError, ValueError) as err:
            raise ConfigError(f"bad options for loss {name!r}: {err}") from None
    return CombinedLoss(terms, weights)
