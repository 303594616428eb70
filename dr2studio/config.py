"""Dataclass configs that round-trip to the JSON files stored beside the weights.

Every network has one dataclass config. ``from_dict`` ignores keys it does not know (the released
``model.json`` carries training keys the model never reads) but keeps them in ``extra`` so that
``to_dict`` writes back what it read.
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, TypeVar

from dr2studio.atomic import atomic_write_text  # re-exported: its old home

T = TypeVar("T", bound="JsonConfig")

__all__ = ["JsonConfig", "ConfigError", "atomic_write_text"]


class ConfigError(ValueError):
    """A config file is missing, unreadable or holds a value out of range."""


@dataclasses.dataclass
class JsonConfig:
    """Base class: JSON round trip with unknown keys preserved in ``extra``."""

    extra: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any]) -> T:
        if not isinstance(data, dict):
            raise ConfigError(f"{cls.__name__}: expected a JSON object, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls) if f.name != "extra"}
        known = {k: v for k, v in data.items() if k in names}
        extra = {k: v for k, v in data.items() if k not in names}
        try:
            cfg = cls(**known, extra=extra)
        except TypeError as exc:  # a required key is missing
            raise ConfigError(f"{cls.__name__}: {exc}") from exc
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Raise :class:`ConfigError` for impossible values. Subclasses extend this."""

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.extra)
        for f in dataclasses.fields(self):
            if f.name != "extra":
                out[f.name] = getattr(self, f.name)
        return out

    @classmethod
    def load(cls: type[T], path: str | os.PathLike) -> T:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            data = json.loads(path.read_text(encoding="utf-8-sig"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(f"cannot read config {path}: {exc}") from exc
        try:
            return cls.from_dict(data)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from exc

    def save(self, path: str | os.PathLike) -> None:
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n")
