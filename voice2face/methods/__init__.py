"""The registry of methods: ``voice2face train <name>`` builds ``METHODS[name]``."""

from voice2face.methods.base import MethodModule, load_method

METHODS: dict[str, type[MethodModule]] = {}


def get_method(name: str) -> type[MethodModule]:
    if name not in METHODS:
        raise KeyError(f"unknown method {name!r}; registered methods: {', '.join(sorted(METHODS))}")
    return METHODS[name]


__all__ = ["METHODS", "MethodModule", "get_method", "load_method"]
