"""Registries of named classes (passes, backends): each class registers itself with a decorator, and a
registry finds them all by importing every module of its package. Depends on nothing else in hwact, so
any layer may use it."""

from __future__ import annotations

import importlib
import pkgutil

from hwact.errors import InputError


class Registry:
    def __init__(self, package: str, kind: str, skip: tuple[str, ...] = ()):
        self.package, self.kind, self.skip = package, kind, skip
        self.classes: dict[str, type] = {}

    def register(self, cls: type) -> type:
        """Class decorator: `cls.name` must be kebab-case (it is what users type)."""
        if not cls.name or cls.name != cls.name.lower() or " " in cls.name or "_" in cls.name:
            raise ValueError(f"{self.kind} name must be kebab-case: {cls.name!r}")
        self.classes[cls.name] = cls
        return cls

    def all(self) -> dict[str, type]:
        """Every registered class by name (importing each module of the package registers its classes)."""
        package = importlib.import_module(self.package)
        for info in pkgutil.iter_modules(package.__path__):
            if info.name not in self.skip:
                importlib.import_module(f"{self.package}.{info.name}")
        return dict(sorted(self.classes.items()))

    def get(self, name: str) -> type:
        classes = self.all()
        if name not in classes:
            raise InputError(f"unknown {self.kind} '{name}'", hint="known: " + ", ".join(classes))
        return classes[name]
