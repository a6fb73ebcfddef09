"""Where a variant's behaviour is found: the module its config kind names.

A variant is one kind of a config union (a distillation method, a teacher source, a data
source). Its config class is pure data (components/config.py: fields, the ``kind`` literal,
and ``implementation``, the dotted name of the module that carries its behaviour); that
module's ``IMPLEMENTATION`` object implements the variant's protocol. The module is imported
only when the behaviour is needed, so reading, validating and printing a config never
imports PyTorch, and a variant defined outside the project (its own config class in an
extended union, its own module) is found the same way as ours.
"""

from __future__ import annotations

import importlib
from typing import Any

from components.config import Variant


def implementation(config: Variant, protocol: Any) -> Any:
    """The object that carries ``config``'s behaviour, checked against ``protocol`` (a
    runtime-checkable Protocol; the caller types the result)."""
    kind = type(config)
    module = importlib.import_module(kind.implementation)
    found = getattr(module, "IMPLEMENTATION", None)
    if found is None or not isinstance(found, protocol):
        raise TypeError(
            f"{kind.implementation}.IMPLEMENTATION does not implement {protocol.__name__} "
            f"(the behaviour of {kind.__name__}, kind {getattr(config, 'kind', '?')!r})"
        )
    return found
