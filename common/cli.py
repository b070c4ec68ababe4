"""Dataclass arguments for scripts: defaults in code, named presets, CLI overrides.

A script declares ``@dataclass class Args`` with a docstring under each field (shown as the
``--help`` text), optional presets as named instances, and calls :func:`parse_args`::

    args = parse_args(Args, presets={"quick": QUICK, "full": FULL})

``--preset NAME`` starts from that instance; any ``--field value`` then overrides it.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import sys
import textwrap
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage block): the flag, what is wrong, --help."""

    def error(self, message: str) -> typing.NoReturn:
        print(f"error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(2)


def field_docs(cls: type) -> dict[str, str]:
    """The docstring written under each field of a dataclass (``""`` where there is none)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):  # no source (e.g. built in a REPL): no help text
            continue
        body = tree.body[0].body  # type: ignore[attr-defined]
        for node, nxt in zip(body, [*body[1:], None], strict=True):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            return rest[0], True
    return tp, False


def _converter(tp: Any, optional: bool):
    def convert(text: str) -> Any:
        if optional and text.lower() in ("none", "null"):
            return None
        if tp is bool:
            lowered = text.lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")
        return tp(text)

    convert.__name__ = getattr(tp, "__name__", str(tp))  # argparse shows it in errors
    return convert


def _add_field(
    parser: argparse.ArgumentParser, f: dataclasses.Field, tp: Any, default: Any, help_text: str
) -> None:
    flag = "--" + f.name.replace("_", "-")
    tp, optional = _unwrap_optional(tp)
    origin = typing.get_origin(tp)
    kwargs: dict[str, Any] = {
        "dest": f.name,
        "default": default,
        "help": f"{help_text} (default: {default!r})",
    }
    if tp is bool:  # optional: unset (None) unless --flag or --no-flag is given
        parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
        return
    if origin is typing.Literal:
        choices = typing.get_args(tp)
        parser.add_argument(
            flag,
            type=_converter(type(choices[0]), optional),
            choices=[*choices, *([None] if optional else [])],
            metavar="{" + ",".join(map(str, choices)) + "}",
            **kwargs,
        )
        return
    if origin in (list, tuple, Sequence):
        (item,) = {a for a in typing.get_args(tp) if a is not Ellipsis} or {str}
        parser.add_argument(flag, type=_converter(item, False), nargs="*", **kwargs)
        return
    if tp in (int, float, str, Path):
        parser.add_argument(flag, type=_converter(tp, optional), **kwargs)
        return
    raise TypeError(f"parse_args cannot handle field {f.name!r} of type {tp!r}")


@dataclass(frozen=True)
class Rule:
    """What values a field of a given name may take, in words, with a valid example."""

    ok: Callable[[Any], bool]
    allowed: str
    example: str


def _at_least(low: float, example: str) -> Rule:
    return Rule(lambda v: v >= low, f">= {low:g}", example)


def _positive(example: str) -> Rule:
    return Rule(lambda v: v > 0, "> 0", example)


def _fraction(example: str) -> Rule:
    return Rule(lambda v: 0 < v < 1, "between 0 and 1 (exclusive)", example)


FIELD_RULES: dict[str, Rule] = {
    # Budgets and sizes: zero or less is an error, never a silently replaced default.
    **{
        name: _at_least(1, example)
        for name, example in {
            "epochs": "3",
            "batch_size": "64",
            "seeds": "3",
            "steps": "40",
            "rounds": "10",
            "steps_per_round": "2000",
            "train_steps_per_round": "250",
            "buffer_size": "100000",
            "n_envs": "8",
            "eval_episodes": "20",
            "val_episodes": "5",
            "timesteps": "100000",
            "max_train": "1000",
            "max_test": "1000",
            "max_transfer": "2000",
            "val_size": "5000",
            "labelled": "1000",
            "images": "12800",
            "texts": "2048",
            "threads": "2",
            "grad_accum": "1",
            "student_layers": "2",
            "checkpoint_every": "200",
            "kills": "10",
        }.items()
    },
    "max_length": _at_least(8, "128"),
    "seed": _at_least(0, "0"),
    "seed_start": _at_least(0, "0"),
    "views": _at_least(0, "4"),
    "view_seed": _at_least(0, "0"),
    "warmup_steps": _at_least(0, "5"),
    "num_workers": _at_least(0, "2"),
    "split_seed": _at_least(0, "0"),
    "lr": _positive("0.001"),
    "weight_decay": _at_least(0, "0.01"),
    "val_frac": _fraction("0.1"),
    "test_frac": _fraction("0.15"),
    "beta_decay": Rule(lambda v: 0 <= v <= 1, "between 0 and 1", "0.5"),
    "transfer_copies": _at_least(0, "1"),
    "word_dropout": _fraction("0.1"),
}
"""Allowed values of every script field with that name, checked by :func:`parse_args` before
any work starts (a field set to None means "unset" and is not checked)."""


def check_fields(args: Any) -> None:
    """Refuse the first field whose value breaks :data:`FIELD_RULES`, naming its flag, the
    allowed range and a valid value."""
    from common.errors import ConfigError

    for f in dataclasses.fields(args):
        rule, value = FIELD_RULES.get(f.name), getattr(args, f.name)
        if rule is None or value is None or isinstance(value, bool):
            continue
        values = value if isinstance(value, tuple) else (value,)
        if not all(isinstance(v, (int, float)) for v in values):
            continue  # a field of the same name that is not a number (predict's --images)
        if not all(rule.ok(v) for v in values):
            flag = "--" + f.name.replace("_", "-")
            raise ConfigError(
                f"{flag} {value!r}: must be {rule.allowed}, e.g. {flag} {rule.example}"
            )


def parse_args(
    cls: type[T],
    argv: Sequence[str] | None = None,
    presets: Mapping[str, T] | None = None,
    description: str | None = None,
) -> T:
    """Build ``cls`` from a preset (if any) plus command-line overrides."""
    presets = dict(presets or {})
    pre = _Parser(add_help=False)
    if presets:
        pre.add_argument("--preset", choices=sorted(presets))
    known, _ = pre.parse_known_args(argv)
    base = presets[known.preset] if presets and known.preset else None

    parser = _Parser(description=description or (inspect.getdoc(cls) or "").split("\n\n")[0])
    if presets:
        parser.add_argument(
            "--preset",
            choices=sorted(presets),
            default=known.preset,
            help="start from this named configuration; other flags override it",
        )
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if not f.init:
            continue
        if base is not None:
            default = getattr(base, f.name)
        elif f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            raise TypeError(f"field {f.name!r} of {cls.__name__} needs a default")
        _add_field(parser, f, hints[f.name], default, docs.get(f.name, ""))
    ns = vars(parser.parse_args(argv))
    ns.pop("preset", None)
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        tp, _ = _unwrap_optional(hints[f.name])
        if typing.get_origin(tp) is tuple and isinstance(ns.get(f.name), list):
            ns[f.name] = tuple(ns[f.name])
    args = cls(**ns)
    check_fields(args)
    return args


RUNTIME_DEFAULTS = {"mixed_precision": "no", "grad_accum": 1, "num_workers": 0}
"""Runtime options (common.experiment.RuntimeArgs) at their defaults. A settings record holds
them only when set, so a run with the defaults keeps the record it had before they existed;
``num_workers`` never changes a result (every batch is a function of seed, epoch and index)
and is never recorded."""


def args_dict(
    args: Any, exclude: Sequence[str] = (), only_when_set: Sequence[str] = ()
) -> dict[str, Any]:
    """A dataclass of arguments as JSON-ready values (paths as strings), without ``exclude``
    and without runtime options at their defaults: what a run records as its settings and
    compares on resume or reuse. ``only_when_set``: options newer than finished runs, left
    out at their field defaults, so those runs keep the record they had before the option."""
    newer = {f.name: f.default for f in dataclasses.fields(args) if f.name in only_when_set}
    return {
        k: str(v) if isinstance(v, Path) else v
        for k, v in dataclasses.asdict(args).items()
        if k not in exclude
        and k != "num_workers"
        and not (k in RUNTIME_DEFAULTS and v == RUNTIME_DEFAULTS[k])
        and not (k in newer and v == newer[k])
    }


def run_main(main: Callable[[], object]) -> None:
    """Run a script's ``main()``, the same way for every script and the main job:

    * a :class:`~common.errors.DistilleryError` (bad input the user can fix) prints its
      message alone, no traceback, and exits with status 2;
    * Ctrl-C prints one line (what is kept, and that the same command resumes) and exits 130;
    * an integer that ``main()`` returns is the exit status.

    Under ``accelerate launch`` the process group is torn down on the way out."""
    from common.errors import DistilleryError
    from common.training import shutdown_distributed

    try:
        status = main()
    except DistilleryError as err:
        shutdown_distributed(wait=False)
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        shutdown_distributed(wait=False)
        print(
            "\ninterrupted: finished runs and the last checkpoint of the current one are kept; "
            "run the same command to resume",
            file=sys.stderr,
        )
        raise SystemExit(130) from None
    except BaseException:
        shutdown_distributed(wait=False)
        raise
    shutdown_distributed()
    if isinstance(status, int) and not isinstance(status, bool) and status:
        raise SystemExit(status)
