"""quantlab's built-in calibrator plugins.

Each module holds one calibrator; all register through the ``quantlab.calibrators``
entry-point group in quantlab's ``pyproject.toml``, exactly as a third-party plugin would.
Shared histogram checks live in :mod:`quantlab.calibrators._common`.
"""
