"""The domain contract: what a domain package provides, and the registry that lists them.

A domain is a package with two scripts (``train_teacher`` and ``distill``, each a module with
``main(argv)`` that takes ``--preset``, ``--out-dir`` and, for ``distill``, ``--teacher`` and
``--seeds``) and a :class:`Domain` record that it names in ``pyproject.toml``::

    [project.entry-points."distillery.domains"]
    image-classification = "image_classification.domain:DOMAIN"

Everything that lists domains reads this registry: the results schema's domain names
(:func:`domain_names`), the main job's pipelines and the report. Adding a domain means adding
its package and that one entry-point line; nothing in ``common`` changes.

What a domain's ``distill.py`` supplies to the shared runner is the
:class:`common.experiment.DistillTask` protocol (build, train, test, save and describe a
student for a method and seed); its ``train_teacher.py`` records its result with
:func:`common.experiment.write_teacher_result`.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from common.losses.registry import Registry

ENTRY_POINT_GROUP = "distillery.domains"


@dataclass(frozen=True)
class Domain:
    """One domain's record: its results name and its two scripts."""

    name: str
    """The ``domain`` field of its results.json files, e.g. "image-classification"."""
    teacher_script: str
    """Module with ``main(argv)`` that trains the teacher into ``<out-dir>/<teacher_artifact>``."""
    distill_script: str
    """Module with ``main(argv)`` that distils ``--teacher`` into students under ``--out-dir``."""
    summary: str = ""
    """One line for listings: teacher -> student."""
    teacher_artifact: str = "model"
    """Path of the trained teacher inside its run folder (what distill's --teacher takes)."""
    config_keys: tuple[str, ...] = ()
    """Keys of a ``config.json`` that together mark a model folder of this domain."""
    marker_files: tuple[str, ...] = ()
    """Files whose presence marks a model folder of this domain."""

    def owns(self, folder: Path) -> bool:
        """Whether ``folder`` looks like a model folder this domain wrote."""
        folder = Path(folder)
        if any((folder / f).is_file() for f in self.marker_files):
            return True
        config = _read_config(folder)
        return bool(config and self.config_keys) and all(k in config for k in self.config_keys)

    def teacher_argv(self, preset: str, root: Path) -> list[str]:
        return ["--preset", preset, "--out-dir", str(root / "teacher")]

    def distill_argv(self, preset: str, root: Path, seeds: int | None) -> list[str]:
        argv = ["--preset", preset, "--teacher", str(root / "teacher" / self.teacher_artifact)]
        argv += ["--out-dir", str(root / "distill")]
        return argv + (["--seeds", str(seeds)] if seeds is not None else [])


_REGISTRY: Registry | None = None


def registry() -> Registry:
    """Every installed domain, loaded once from the ``distillery.domains`` entry points."""
    global _REGISTRY
    if _REGISTRY is None:
        found = Registry("domain")
        for ep in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            domain = ep.load()
            if not isinstance(domain, Domain) or domain.name != ep.name:
                raise TypeError(
                    f"entry point {ep.name} = {ep.value} must name a common.domains.Domain "
                    f"whose name is {ep.name!r}"
                )
            found.add(ep.name, lambda d=domain: d)
        _REGISTRY = found
    return _REGISTRY


def domains() -> dict[str, Domain]:
    """Name -> :class:`Domain`, in name order."""
    reg = registry()
    return {name: reg.get(name)() for name in reg.names()}


def domain_names() -> tuple[str, ...]:
    return tuple(registry().names())


def get_domain(name: str) -> Domain:
    """The domain called ``name``; an unknown name is a ConfigError listing the known ones."""
    return registry().get(name)()


def _read_config(folder: Path) -> dict:
    import json

    try:
        data = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def check_model_folder(folder: Path, domain: str) -> None:
    """Refuse a model folder that another domain wrote, naming that domain (loading it would
    fail later with an error that does not say why)."""
    from common.errors import ConfigError

    if domains()[domain].owns(folder):
        return
    for other in domains().values():
        if other.name != domain and other.owns(folder):
            raise ConfigError(
                f"{folder} holds a model of the {other.name} domain ({other.summary}), not of "
                f"{domain}; "
                f"pass a folder written by {domains()[domain].teacher_script} or its distill"
            )
