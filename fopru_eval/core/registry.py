"""A registry of named pruning methods (strategies, scorers) that users extend from their own code.

A method is found by the name users type in ``--model_args``:
  - a built-in or registered name (``rank``);
  - ``package.module:function``, imported on first use, so a researcher evaluates their own rule without a fork;
  - a name some installed package declares in the registry's entry-point group (``[project.entry-points.
    "fopru_eval.strategies"] keep_center = "my_pkg.pruning:keep_center"``).
Every lookup failure is a ``PruningConfigError`` naming the argument and the accepted values, raised when the config
is validated, before any weights load.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Generic, TypeVar

Method = TypeVar("Method")


class PruningConfigError(ValueError):
    """A pruning argument has a value we do not accept; the message names the argument and the accepted values."""


class Registry(Generic[Method]):
    """Named methods of one kind (``method_type``). A user's module may define such a method itself, or a plain
    function with the registry's ``signature``, which ``wrap`` turns into one."""

    def __init__(
        self,
        argument: str,
        method_type: type[Method],
        entry_point_group: str,
        signature: tuple[str, ...],
        wrap: Callable[[str, Callable], Method],
    ) -> None:
        self.argument = argument
        self.method_type = method_type
        self.entry_point_group = entry_point_group
        self.signature = signature
        self.wrap = wrap
        self._methods: dict[str, Method] = {}
        # Methods found by package.module:function or entry point, by spec: not listed among the accepted names.
        self._found: dict[str, Method] = {}

    def add(self, name: str, method: Method) -> Method:
        if name in self._methods:
            raise ValueError(f"{self.argument}={name!r} is registered already")
        self._methods[name] = method
        return method

    def names(self) -> list[str]:
        return list(self._methods)

    def accepted(self) -> str:
        """The accepted values, as every error message lists them."""
        return f"{', '.join(self._methods)}, or package.module:function"

    def get(self, spec: str) -> Method:
        """The method ``spec`` names (see the module docstring); resolved user functions are cached by spec."""
        if spec in self._methods:
            return self._methods[spec]
        if spec not in self._found:
            target = spec if ":" in spec else self._entry_point(spec)
            if target is None:
                raise PruningConfigError(
                    f"{self.argument}={spec!r} is not supported; accepted values: {self.accepted()}"
                )
            self._found[spec] = self._load(spec, target)
        return self._found[spec]

    def _entry_point(self, name: str) -> str | None:
        for entry in entry_points(group=self.entry_point_group):
            if entry.name == name:
                return entry.value
        return None

    def _load(self, spec: str, target: str) -> Method:
        module_name, _, attribute = target.partition(":")
        try:
            found = getattr(importlib.import_module(module_name), attribute)
        except (ImportError, AttributeError) as error:
            raise PruningConfigError(
                f"{self.argument}={spec!r}: cannot import {target} ({error}); give package.module:function of an "
                f"importable module, or one of {self.accepted()}"
            ) from None
        if isinstance(found, self.method_type):
            return found
        if not callable(found):
            raise PruningConfigError(f"{self.argument}={spec!r}: {target} is a {type(found).__name__}, not a function")
        self.check_signature(spec, found)
        return self.wrap(spec, found)

    def check_signature(self, spec: str, function: Callable) -> None:
        """A user's function must accept the registry's positional arguments."""
        try:
            inspect.signature(function).bind(*self.signature)
        except TypeError:
            wanted = ", ".join(self.signature)
            raise PruningConfigError(
                f"{self.argument}={spec!r}: {getattr(function, '__qualname__', function)} must take ({wanted})"
            ) from None
        except ValueError:  # a builtin without a signature: let it fail, loudly, when called
            pass
