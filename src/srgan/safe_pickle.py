"""Reading pickles that someone else wrote, without letting them run code.

``pickle.load`` calls whatever callables the file names. :func:`load_numpy_pickle` admits only
what a pickle of NumPy arrays in plain containers needs (the array and dtype reconstructors of
NumPy 1 and 2, for every pickle protocol, and NumPy scalars); the containers themselves (dict,
list, tuple, str, numbers) need no lookup. Anything else the file names is refused with an error
naming the file and the callable, before it is called.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

ALLOWED = frozenset(
    (module, name)
    for prefix in ("numpy.core", "numpy._core")
    for module, name in (
        (f"{prefix}.multiarray", "_reconstruct"),  # protocols 0-4
        (f"{prefix}.numeric", "_frombuffer"),  # protocol 5
        (f"{prefix}.multiarray", "scalar"),  # np.float32(...) etc.
    )
) | {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("collections", "OrderedDict"),
    # protocols 0-2 write bytes as _codecs.encode(text, "latin1"): a pure text-to-bytes conversion
    ("_codecs", "encode"),
}


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle names something other than NumPy arrays and plain containers."""


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def __init__(self, file, path: Path) -> None:
        super().__init__(file)
        self.path = path

    def find_class(self, module: str, name: str):
        if (module, name) not in ALLOWED:
            raise UnsafePickleError(
                f"{self.path}: refusing to load {module}.{name} (only NumPy arrays in plain containers are "
                "read from a pickle; it could run code)"
            )
        return super().find_class(module, name)

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"{self.path}: refusing a persistent id in the pickle ({pid!r})")


def load_numpy_pickle(path: str | Path) -> Any:
    """The object a pickle of NumPy arrays / dtypes / scalars in plain containers holds."""
    path = Path(path)
    with open(path, "rb") as f:
        try:
            return _NumpyOnlyUnpickler(f, path).load()
        except UnsafePickleError:
            raise
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as err:
            raise UnsafePickleError(f"{path}: not a readable pickle of arrays ({type(err).__name__}: {err})") from err
