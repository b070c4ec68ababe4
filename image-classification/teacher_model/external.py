"""Bring your own teacher: any torchvision classification model, or your own ``nn.Module``,
described by a small JSON *teacher spec* that ``distill.py --teacher spec.json`` takes in place
of a teacher folder.

.. code-block:: json

    {
      "arch": "torchvision:resnet18",
      "weights": "resnet18-fmnist.safetensors",
      "input_size": [224, 224],
      "mean": [0.485, 0.456, 0.406],
      "std": [0.229, 0.224, 0.225]
    }

* ``arch``: ``torchvision:NAME`` (a classification model of ``torchvision.models``, built with
  ``weights=None`` and ``num_classes``), or ``package.module:factory``, a callable returning an
  ``nn.Module`` (imported the normal way: the package must be installed or on ``PYTHONPATH``).
* ``weights``: a safetensors file, or a ``state_dict`` saved with ``torch.save`` (read with
  ``torch.load(weights_only=True)``: a pickled full model is refused, never unpickled); a
  relative path is relative to the spec file. Required for torchvision; a factory may load its
  own weights and leave it out.
* ``input_size`` (``H`` or ``[H, W]``), ``mean`` and ``std`` (one value per input channel the
  teacher takes): what the teacher was trained on, on pixels in ``[0, 1]``.
* Optional: ``num_classes`` (torchvision head size; default the dataset's), ``kwargs`` (more
  builder/factory arguments), ``interpolation`` (``bilinear`` default, ``bicubic``,
  ``nearest``), ``taps`` (modules whose outputs are feature maps for ``fitnet``/``at``: a list
  of module names, or ``{key: module}``; default ``layer1``..``layer4`` when the model has
  them, as torchvision's ResNets do), ``dataset`` (default for ``--dataset``), ``classes``
  (checked against the dataset's class names).

:class:`ExternalTeacher` wraps the model so it takes the student's batches (the dataset's
images at the student's normalisation) and converts them to what the spec declares: back to
``[0, 1]``, grey to as many channels as the teacher takes (or RGB to grey by luma), resized to
its input size, normalised with its mean and std. It is an ``nn.Module`` (buffers, no
``.cuda()``), so Accelerate places it with everything else. :meth:`TeacherSpec.identity`
(weights file sha256, architecture, builder arguments, declared preprocessing, taps) is what
the teacher-output caches and the run settings are keyed by, so another teacher never reuses
cached logits or finished runs.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import inspect
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from common.errors import CheckpointError, ConfigError, ShapeMismatchError
from common.io import sha256_file

TORCHVISION = "torchvision:"
RESNET_TAPS = ("layer1", "layer2", "layer3", "layer4")
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
KEYS = (
    "arch",
    "weights",
    "input_size",
    "mean",
    "std",
    "num_classes",
    "kwargs",
    "interpolation",
    "taps",
    "dataset",
    "classes",
)
STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model")
"""Checkpoint dicts that hold the state_dict under one of these keys are read too."""
LUMA = (0.299, 0.587, 0.114)
"""ITU-R BT.601 weights: RGB data for a teacher that takes grey images."""


def is_teacher_spec(path: Path) -> bool:
    """``--teacher`` names a teacher spec (a ``.json`` file), not a saved-teacher folder."""
    return Path(path).suffix.lower() == ".json"


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())[:400]


@dataclass(frozen=True)
class TeacherSpec:
    """A parsed teacher spec (see the module docstring); ``path`` is the spec file."""

    path: Path
    arch: str
    input_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    weights: Path | None = None
    num_classes: int | None = None
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    interpolation: str = "bilinear"
    taps: Mapping[str, str] | None = None
    dataset: str | None = None
    classes: tuple[str, ...] | None = None

    @property
    def in_channels(self) -> int:
        return len(self.mean)

    @property
    def is_torchvision(self) -> bool:
        return self.arch.startswith(TORCHVISION)

    @property
    def name(self) -> str:
        """Short name for results: ``torchvision:resnet18@224x224``."""
        return f"{self.arch}@{self.input_size[0]}x{self.input_size[1]}"

    def describe(self) -> dict[str, Any]:
        """The declared part of the spec (JSON-able; weights by file name)."""
        return {
            "arch": self.arch,
            "weights": str(self.weights) if self.weights else None,
            "input_size": list(self.input_size),
            "mean": list(self.mean),
            "std": list(self.std),
            "num_classes": self.num_classes,
            "kwargs": dict(self.kwargs),
            "interpolation": self.interpolation,
            "taps": dict(self.taps) if self.taps is not None else None,
        }


def _fail(path: Path, problem: str) -> ConfigError:
    return ConfigError(f"teacher spec {path}: {problem}")


def _floats(path: Path, raw: dict, key: str) -> tuple[float, ...]:
    value = raw.get(key)
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
    ):
        raise _fail(
            path,
            f'"{key}" must be a list of numbers, one per input channel of the teacher (e.g. '
            "[0.485, 0.456, 0.406] for an ImageNet model), on pixels in [0, 1]",
        )
    return tuple(float(v) for v in value)


def load_teacher_spec(path: Path) -> TeacherSpec:
    """Parse and check a teacher spec file; every problem names the key and the fix."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"teacher spec {path} does not exist; write one (arch, weights, input_size, mean, "
            "std: see the README's image section) or pass a teacher folder from train_teacher.py"
        )
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise _fail(path, f"not valid JSON ({_one_line(err)}); fix the file") from None
    if not isinstance(raw, dict):
        raise _fail(path, "must be a JSON object with arch, weights, input_size, mean and std")
    unknown = sorted(set(raw) - set(KEYS))
    if unknown:
        near = difflib.get_close_matches(unknown[0], KEYS, n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise _fail(path, f"unknown key {unknown[0]!r}{hint}; known keys: {', '.join(KEYS)}")
    missing = [k for k in ("arch", "input_size", "mean", "std") if k not in raw]
    if missing:
        raise _fail(
            path,
            f"missing {', '.join(repr(k) for k in missing)}: declare what the teacher takes "
            '(e.g. "input_size": 224, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, '
            "0.225])",
        )
    arch = raw["arch"]
    if not isinstance(arch, str) or ":" not in arch or arch.endswith(":"):
        raise _fail(
            path,
            f'"arch" {arch!r}: write "torchvision:NAME" (e.g. "torchvision:resnet18") or '
            '"package.module:factory" for your own model',
        )
    size = raw["input_size"]
    if isinstance(size, int) and not isinstance(size, bool):
        size = [size, size]
    if (
        not isinstance(size, list)
        or len(size) != 2
        or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size)
    ):
        raise _fail(path, f'"input_size" {raw["input_size"]!r}: give H or [H, W] in pixels')
    mean, std = _floats(path, raw, "mean"), _floats(path, raw, "std")
    if len(mean) != len(std):
        raise _fail(path, f'"mean" has {len(mean)} values, "std" {len(std)}: one per channel')
    if any(s <= 0 for s in std):
        raise _fail(path, f'"std" {list(std)}: every value must be > 0')
    interpolation = raw.get("interpolation", "bilinear")
    if interpolation not in INTERPOLATIONS:
        raise _fail(path, f'"interpolation" {interpolation!r}: use {", ".join(INTERPOLATIONS)}')
    weights = raw.get("weights")
    if weights is not None:
        if not isinstance(weights, str):
            raise _fail(path, '"weights" must be a file path (relative to the spec file)')
        weights = Path(weights).expanduser()
        if not weights.is_absolute():
            weights = path.parent / weights
    elif arch.startswith(TORCHVISION):
        raise _fail(
            path,
            '"weights" is missing: a torchvision teacher needs its trained weights (a '
            "safetensors file, or a state_dict saved with torch.save)",
        )
    num_classes = raw.get("num_classes")
    if num_classes is not None and (
        not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1
    ):
        raise _fail(path, f'"num_classes" {num_classes!r}: give a whole number >= 1')
    if num_classes is not None and not arch.startswith(TORCHVISION):
        raise _fail(
            path,
            '"num_classes" sizes a torchvision head; pass a factory its arguments in "kwargs"',
        )
    kwargs = raw.get("kwargs", {})
    if not isinstance(kwargs, dict):
        raise _fail(path, '"kwargs" must be a JSON object of keyword arguments')
    taps = raw.get("taps")
    if isinstance(taps, list) and all(isinstance(t, str) for t in taps):
        taps = {t: t for t in taps}
    if taps is not None and not (
        isinstance(taps, dict) and all(isinstance(v, str) for v in taps.values())
    ):
        raise _fail(path, '"taps" must be a list of module names or {"key": "module.name"}')
    if taps is not None and "logits" in taps:
        raise _fail(path, '"taps" cannot use the key "logits" (the teacher\'s class scores)')
    classes = raw.get("classes")
    if classes is not None and not (
        isinstance(classes, list) and all(isinstance(c, str) for c in classes)
    ):
        raise _fail(path, '"classes" must be a list of class names')
    return TeacherSpec(
        path=path,
        arch=arch,
        input_size=(int(size[0]), int(size[1])),
        mean=mean,
        std=std,
        weights=weights,
        num_classes=num_classes,
        kwargs=dict(kwargs),
        interpolation=interpolation,
        taps=taps,
        dataset=raw.get("dataset"),
        classes=tuple(classes) if classes is not None else None,
    )


# --------------------------------------------------------------------------- building


def torchvision_names() -> list[str]:
    """The classification models ``torchvision.models`` builds by name."""
    from torchvision import models

    return sorted(models.list_models(module=models))


def resolve_builder(spec: TeacherSpec) -> Callable[..., Any]:
    """The callable that builds the teacher: a torchvision builder or the user's factory.
    Unknown names and imports that fail are errors naming near matches or the fix."""
    if spec.is_torchvision:
        from torchvision import models

        name = spec.arch[len(TORCHVISION) :]
        names = torchvision_names()
        if name not in names:
            near = difflib.get_close_matches(name, names, n=4, cutoff=0.5)
            hint = f"; did you mean {', '.join(near)}?" if near else ""
            raise ConfigError(
                f"teacher spec {spec.path}: torchvision has no classification model {name!r}"
                f"{hint} (all {len(names)}: python -c 'import torchvision; "
                "print(torchvision.models.list_models(module=torchvision.models))')"
            )
        return models.get_model_builder(name)
    module_name, _, attr = spec.arch.rpartition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(
            f"teacher spec {spec.path}: cannot import {module_name!r} for arch {spec.arch!r} "
            f"({_one_line(err)}); install the package, or put the folder holding it on "
            "PYTHONPATH"
        ) from None
    except Exception as err:  # the user's module raised while importing
        raise ConfigError(
            f"teacher spec {spec.path}: importing {module_name!r} raised "
            f"{type(err).__name__}: {_one_line(err)}; fix the module"
        ) from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        found = [n for n, v in vars(module).items() if callable(v) and not n.startswith("_")]
        near = difflib.get_close_matches(attr, found, n=3)
        hint = f"; did you mean {', '.join(near)}?" if near else ""
        raise ConfigError(
            f"teacher spec {spec.path}: module {module_name!r} has no callable {attr!r}{hint} "
            "(arch is package.module:factory, the factory returning an nn.Module)"
        )
    return factory


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """A state_dict from a safetensors file or a ``torch.save``d state_dict, unpickling
    nothing but tensors and plain containers (``torch.load(weights_only=True)``)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f'teacher weights {path} do not exist; fix "weights" in the teacher spec (a '
            "relative path is relative to the spec file)"
        )
    with open(path, "rb") as f:
        head = f.read(9)
    if path.suffix == ".safetensors" or (len(head) == 9 and head[8:9] == b"{"):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as err:
            raise CheckpointError(
                f"teacher weights {path} are unreadable ({_one_line(err)}): the file is "
                "truncated or not safetensors; save them again with safetensors.torch.save_file"
            ) from None
    import pickle

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        text = str(err)
        if "Unsupported global" in text:
            what = text.split("Unsupported global:", 1)[1].split("was not")[0].strip()
            what = what.removeprefix("GLOBAL ")
            raise CheckpointError(
                f"teacher weights {path} are a pickled object ({what}), not a state_dict: "
                "refusing to unpickle it (that could run any code). Save the weights alone: "
                "safetensors.torch.save_file(model.state_dict(), 'teacher.safetensors') or "
                "torch.save(model.state_dict(), 'teacher.pt')"
            ) from None
        raise CheckpointError(
            f"teacher weights {path} are unreadable with torch.load(weights_only=True): not a "
            "torch.save file, or damaged; save a state_dict with safetensors.torch.save_file"
        ) from None
    except (RuntimeError, OSError, EOFError, ValueError) as err:
        raise CheckpointError(
            f"teacher weights {path} are unreadable ({_one_line(err)[:160]}): truncated or "
            "damaged; save them again"
        ) from None
    return _as_state_dict(state, path)


def _as_state_dict(state: Any, path: Path) -> dict[str, Tensor]:
    def tensors(obj: Any) -> bool:
        return (
            isinstance(obj, Mapping)
            and bool(obj)
            and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items())
        )

    if tensors(state):
        return dict(state)
    if isinstance(state, Mapping):
        for key in STATE_DICT_KEYS:
            if tensors(state.get(key)):
                return dict(state[key])
    kind = (
        f"a dict with keys {sorted(map(str, state))[:6]}"
        if isinstance(state, Mapping)
        else (type(state).__name__)
    )
    raise CheckpointError(
        f"teacher weights {path} hold {kind}, not a state_dict (names -> tensors); save "
        "model.state_dict()"
    )


def load_weights(model: nn.Module, state: Mapping[str, Tensor], spec: TeacherSpec) -> None:
    """``model.load_state_dict(state)``, strictly; a mismatch names the keys and shapes."""
    state = dict(state)
    if state and all(k.startswith("module.") for k in state):  # saved from DataParallel/DDP
        state = {k[len("module.") :]: v for k, v in state.items()}
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {list(state[k].shape)} in the file, {list(own[k].shape)} in the model"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if missing or unexpected or shapes:
        parts = []
        if shapes:
            parts.append(f"{len(shapes)} shape(s) differ ({'; '.join(shapes[:3])})")
        if missing:
            parts.append(f"{len(missing)} key(s) missing from the file ({', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s) ({', '.join(unexpected[:3])})")
        fix = (
            'set "num_classes" to the class count the weights were trained for'
            if spec.is_torchvision and shapes and len(shapes) <= 2 and not missing
            else f'check that the weights are a {spec.arch} state_dict (and its "kwargs")'
        )
        raise CheckpointError(
            f"teacher weights {spec.weights} do not fit {spec.arch}: {'; '.join(parts)}; {fix}"
        )
    model.load_state_dict(state)


def factory_source_sha256(spec: TeacherSpec) -> str | None:
    """sha256 of the factory's source file (so an edited model is another teacher)."""
    if spec.is_torchvision:
        return None
    try:
        source = inspect.getsourcefile(resolve_builder(spec))
    except TypeError:
        return None
    return sha256_file(Path(source)) if source and Path(source).is_file() else None


def build_model(
    spec: TeacherSpec, num_classes: int, state: Mapping[str, Tensor] | None
) -> nn.Module:
    """The bare teacher with its weights: ``num_classes`` (the dataset's) sizes a torchvision
    head unless the spec sets ``num_classes``."""
    builder = resolve_builder(spec)
    kwargs = dict(spec.kwargs)
    if spec.is_torchvision:
        kwargs = {"weights": None, "num_classes": spec.num_classes or num_classes, **kwargs}
    try:
        model = builder(**kwargs)
    except Exception as err:
        raise ConfigError(
            f"teacher spec {spec.path}: {spec.arch}(**{kwargs}) raised {type(err).__name__}: "
            f'{_one_line(err)}; fix "kwargs" (or the factory)'
        ) from None
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"teacher spec {spec.path}: {spec.arch} returned {type(model).__name__}, not a "
            "torch.nn.Module; make the factory return the model"
        )
    if state is not None:
        load_weights(model, state, spec)
    return model


# --------------------------------------------------------------------------- the wrapper


def _as_logits(out: Any) -> Tensor | None:
    if isinstance(out, Tensor):
        return out
    if isinstance(out, Mapping) and isinstance(out.get("logits"), Tensor):
        return out["logits"]
    logits = getattr(out, "logits", None)
    return logits if isinstance(logits, Tensor) else None


class _Tap:
    """Forward hook that keeps a module's output under ``key`` in its owner's capture dict.
    (A hook object, not a closure, so a deep copy of the owner hooks into the copy.)"""

    def __init__(self, owner: ExternalTeacher, key: str) -> None:
        self.owner, self.key = owner, key

    def __call__(self, module: nn.Module, inputs: Any, output: Any) -> None:
        self.owner._captured[self.key] = output


class ExternalTeacher(nn.Module):
    """A foreign model behind the domain's teacher interface: takes the dataset's images at
    the student's normalisation (``data_mean``/``data_std``), converts them to what the
    teacher declares (channels, size, its mean/std) and returns ``{"logits", *taps}``."""

    def __init__(
        self,
        model: nn.Module,
        spec: TeacherSpec,
        data_mean: list[float],
        data_std: list[float],
        taps: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.input_size = tuple(spec.input_size)
        self.interpolation = spec.interpolation

        def column(values: Any) -> Tensor:
            return torch.tensor([float(v) for v in values]).view(1, -1, 1, 1)

        self.register_buffer("data_mean", column(data_mean), persistent=False)
        self.register_buffer("data_std", column(data_std), persistent=False)
        self.register_buffer("mean", column(spec.mean), persistent=False)
        self.register_buffer("std", column(spec.std), persistent=False)
        self.register_buffer("luma", column(LUMA), persistent=False)
        self._captured: dict[str, Any] = {}
        self.taps = dict(taps or {})
        for key, name in self.taps.items():
            model.get_submodule(name).register_forward_hook(_Tap(self, key))

    def preprocess(self, images: Tensor) -> Tensor:
        """Student-normalised images -> the teacher's declared input."""
        x = images * self.data_std + self.data_mean  # pixels in [0, 1]
        have, want = x.shape[1], self.mean.shape[1]
        if have != want:
            if have == 1:
                x = x.expand(-1, want, -1, -1)
            elif have == 3 and want == 1:
                x = (x * self.luma).sum(1, keepdim=True)
            else:
                raise ShapeMismatchError(
                    f"the teacher takes {want}-channel images, the data have {have}: only grey "
                    "to N channels and RGB to grey are converted; declare mean/std for the "
                    "data's channels"
                )
        if tuple(x.shape[-2:]) != self.input_size:
            smooth = self.interpolation != "nearest"
            x = F.interpolate(
                x,
                size=self.input_size,
                mode=self.interpolation,
                align_corners=False if smooth else None,
                antialias=smooth,
            )
        return (x - self.mean) / self.std

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        self._captured = {}
        out = self.model(self.preprocess(images))
        captured, self._captured = self._captured, {}
        logits = _as_logits(out)
        if logits is None:
            raise ShapeMismatchError(
                f"the teacher returned {type(out).__name__}: a teacher must return a [batch, "
                "classes] tensor (or a dict / output object with 'logits')"
            )
        return {"logits": logits, **{k: captured[k] for k in self.taps if k in captured}}


def default_taps(model: nn.Module) -> dict[str, str]:
    """``layer1``..``layer4`` where the model has them (torchvision's ResNet family)."""
    children = dict(model.named_children())
    return {t: t for t in RESNET_TAPS if t in children}


def check_taps(model: nn.Module, spec: TeacherSpec) -> dict[str, str]:
    """The spec's taps (each a module of the model), or the ResNet default."""
    if spec.taps is None:
        return default_taps(model)
    names = [n for n, _ in model.named_modules() if n]
    for key, name in spec.taps.items():
        if name not in names:
            near = difflib.get_close_matches(name, names, n=3)
            hint = f"; did you mean {', '.join(near)}?" if near else ""
            raise ConfigError(
                f"teacher spec {spec.path}: tap {key!r} names module {name!r}, which "
                f"{spec.arch} does not have{hint}"
            )
    return dict(spec.taps)


def probe(
    teacher: ExternalTeacher,
    spec: TeacherSpec,
    data_shape: tuple[int, int, int],
    num_classes: int,
    explicit_taps: bool,
) -> None:
    """One dummy batch through the wrapped teacher: the model must take the declared input,
    predict the dataset's class count, and give a 4-D map at every tap. Drops default taps
    that give no map (a model whose forward skips them)."""
    c, h, w = data_shape
    shown = f"{spec.in_channels}x{spec.input_size[0]}x{spec.input_size[1]}"
    teacher.eval()
    try:
        with torch.no_grad():
            out = teacher(torch.zeros(2, c, h, w))
    except ShapeMismatchError:
        raise
    except Exception as err:
        raise ShapeMismatchError(
            f"the teacher {spec.arch} refused its declared input: a batch of 2 images "
            f"{c}x{h}x{w} converted to {shown} raised {type(err).__name__}: {_one_line(err)}. "
            f'Declare in {spec.path} the input it takes ("input_size", and one "mean"/"std" '
            "value per input channel)"
        ) from None
    logits = out["logits"]
    if logits.dim() != 2 or logits.shape[0] != 2:
        raise ShapeMismatchError(
            f"the teacher {spec.arch} returned logits of shape {list(logits.shape)} for a batch "
            "of 2; a teacher must return [batch, classes]"
        )
    if logits.shape[1] != num_classes:
        fix = (
            f'weights trained for {num_classes} classes (and "num_classes": {num_classes})'
            if spec.is_torchvision
            else f"a factory whose model predicts {num_classes} classes"
        )
        raise ShapeMismatchError(
            f"the teacher in {spec.path} predicts {logits.shape[1]} classes, the dataset has "
            f"{num_classes}: distil on the dataset it was trained for, or give {fix}"
        )
    for key in list(teacher.taps):
        value = out.get(key)
        if isinstance(value, Tensor) and value.dim() == 4:
            continue
        if explicit_taps:
            got = (
                "no output"
                if value is None
                else f"{type(value).__name__} "
                + (str(list(value.shape)) if isinstance(value, Tensor) else "")
            )
            raise ConfigError(
                f"teacher spec {spec.path}: tap {key!r} (module {teacher.taps[key]!r}) gave "
                f"{got}, not a [batch, channels, height, width] feature map; tap a "
                "convolutional block"
            )
        del teacher.taps[key]


def state_sha256(model: nn.Module) -> str:
    """sha256 over a model's state_dict (names, dtypes, shapes, bytes), in key order."""
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        if isinstance(tensor, Tensor):
            t = tensor.detach().cpu().contiguous()
            h.update(f"{t.dtype}{list(t.shape)}".encode())
            # reshape(-1): a 0-dim tensor (BatchNorm's num_batches_tracked) has no byte view.
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


@dataclass
class LoadedTeacher:
    """What :func:`load_external_teacher` gives the task."""

    model: ExternalTeacher
    spec: TeacherSpec
    identity: dict[str, Any]
    digest: str
    """sha256 of ``identity``: the teacher's name in cache keys and run settings."""


def identity_digest(identity: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def read_spec_weights(spec: TeacherSpec) -> tuple[dict[str, Tensor] | None, str | None]:
    """The spec's state_dict and the weights file's sha256 (``None, None`` without one)."""
    if spec.weights is None:
        return None, None
    state = read_state_dict(spec.weights)
    return state, sha256_file(spec.weights)


def load_external_teacher(
    spec: TeacherSpec,
    data_shape: tuple[int, int, int],
    data_mean: list[float],
    data_std: list[float],
    classes: list[str],
    weights: tuple[dict[str, Tensor] | None, str | None] | None = None,
) -> LoadedTeacher:
    """Build, load, wrap and probe the teacher of ``spec`` for data of ``data_shape`` at
    normalisation ``data_mean``/``data_std`` with ``classes``; frozen, in eval mode.
    ``weights``: what :func:`read_spec_weights` returned, if already read."""
    if spec.classes is not None and list(spec.classes) != list(classes):
        raise ShapeMismatchError(
            f"the teacher in {spec.path} was trained on classes {list(spec.classes)[:4]}..., "
            f"the dataset has {list(classes)[:4]}...: distil on the teacher's dataset"
        )
    state, weights_sha = weights if weights is not None else read_spec_weights(spec)
    model = build_model(spec, len(classes), state)
    taps = check_taps(model, spec)
    teacher = ExternalTeacher(model, spec, data_mean, data_std, taps)
    probe(teacher, spec, data_shape, len(classes), explicit_taps=spec.taps is not None)
    if not any(True for _ in model.parameters()):
        raise ConfigError(
            f"teacher spec {spec.path}: {spec.arch} has no parameters, so nothing it could "
            "have learned; point arch at the trained model"
        )
    teacher.requires_grad_(False).eval()
    identity = {
        **spec.describe(),
        "weights": Path(spec.weights).name if spec.weights else None,
        "weights_sha256": weights_sha,
        "num_classes": spec.num_classes or (len(classes) if spec.is_torchvision else None),
        "taps": dict(teacher.taps),
    }
    if weights_sha is None:  # a factory that loads its own weights: hash what it built
        identity["state_sha256"] = state_sha256(model)
    source = factory_source_sha256(spec)
    if source is not None:
        identity["factory_source_sha256"] = source
    return LoadedTeacher(teacher, spec, identity, identity_digest(identity))
