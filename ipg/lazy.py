"""Names a package exports but imports only on first use, so that importing the package stays cheap."""

from __future__ import annotations

from importlib import import_module


def lazy_exports(package: str, exports: dict[str, str]):
    """``(__getattr__, __all__)`` for ``package``: each name of ``exports`` is read from its module (the value)
    when first asked for; any other name raises AttributeError as a module would."""

    def __getattr__(name: str):
        if name in exports:
            return getattr(import_module(exports[name]), name)
        raise AttributeError(f"module '{package}' has no attribute '{name}'")

    return __getattr__, sorted(exports)
