"""The built-in methods, one sub-package each; importing this package registers them all.

A method's package holds its config (``config.py``: that method's fields only), its
layer(s) (``layer.py``) and, when it needs more than the plain step, its training step
(``step.py``), and ends with one :func:`lowrank.registry.register_method` call. Adding a
method is adding a folder here (or a module named in ``$LOWRANK_PLUGINS``): nothing else
changes.
"""

from __future__ import annotations

import importlib
import pkgutil

#: Built-ins in the order the CLI and reports list them; any other sub-package follows by name.
_ORDER = ("dense", "vanilla", "twofactor", "svd", "lora", "dlrt")

for _name in sorted((i.name for i in pkgutil.iter_modules(__path__) if i.ispkg and not i.name.startswith("_")),
                    key=lambda n: (_ORDER.index(n) if n in _ORDER else len(_ORDER), n)):
    importlib.import_module(f"{__name__}.{_name}")
