"""Where a variant's behaviour is found: the module its config kind names.

A variant is one kind of a config union (a distillation method, a teacher source, a data
source). Its config class is pure data (components/config.py: fields, the ``kind`` literal,
and ``implementation``, the dotted name of the module that carries its behaviour); that
module's ``IMPLEMENTATION`` object implements the variant's protocol (``"module:name"``
names another object of the module, for a module that carries several variants). The
module is imported only when the behaviour is needed, so reading, validating and printing
a config never imports PyTorch, and a variant defined outside the project (its own config
class in an extended union, its own module) is found the same way as ours.
"""

from __future__ import annotations

import importlib
from typing import Any

from components.config import Variant


def implementation(config: Variant, protocol: Any) -> Any:
    """The object that carries ``config``'s behaviour, checked against ``protocol`` (a
    runtime-checkable Protocol; the caller types the result)."""
    kind = type(config)
    module_name, _, attribute = kind.implementation.partition(":")
    module = importlib.import_module(module_name)
    found = getattr(module, attribute or "IMPLEMENTATION", None)
    if found is None or not isinstance(found, protocol):
        raise TypeError(
            f"{kind.implementation}: no {attribute or 'IMPLEMENTATION'} implementing "
            f"{protocol.__name__} (the behaviour of {kind.__name__}, kind "
            f"{getattr(config, 'kind', '?')!r})"
        )
    return found
