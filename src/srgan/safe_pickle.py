"""Reading pickles that someone else wrote, without letting them run code or forge objects.

``pickle.load`` calls whatever callables the file names. :func:`load_numpy_pickle` admits only
what a pickle of plain NumPy arrays in plain containers needs, and checks what each of those is
given: NumPy 1 and 2's array reconstructors (``_reconstruct``, ``_frombuffer``, ``scalar``) and
``dtype``, for every pickle protocol, ``OrderedDict``, and the text-to-bytes step of protocols 0-2.
Only numeric and boolean data types are admitted (byte order free): an object, structured or
subarray dtype would let a file's bytes be taken as pointers to Python objects, so it is refused,
whether it arrives as a type string or through a dtype's pickled state. ``numpy.ndarray`` itself is
never callable from the file (only passed to ``_reconstruct``), and an array's state must carry
exactly as many bytes as its shape needs. The plain containers (dict, list, tuple, str, numbers)
need no lookup. Anything else is refused with an error naming the file and what it asked for,
before anything is called.

The pure-Python unpickler is used (``pickle._Unpickler``) because its opcodes can be checked one by
one; arrays arrive as whole byte strings, so it is not slower where it matters.
"""

from __future__ import annotations

import codecs
import collections
import math
import pickle
from pathlib import Path
from typing import Any

import numpy as np

# Kinds of dtype a pickle may create: bool, signed / unsigned integers, floats, complex.
PLAIN_KINDS = "biufc"


class UnsafePickleError(pickle.UnpicklingError, ValueError):
    """The pickle names or builds something other than plain NumPy arrays in plain containers."""


def _plain(dtype: Any, where: str) -> np.dtype:
    if not isinstance(dtype, np.dtype) or dtype.kind not in PLAIN_KINDS or dtype.fields or dtype.subdtype:
        raise UnsafePickleError(f"{where}: data type {dtype!r} is not a plain numeric type")
    return dtype


class _NdarrayClass:
    """What the file gets for ``numpy.ndarray``: a name it can pass to ``_reconstruct``, not call."""


_NDARRAY = _NdarrayClass()


def _reconstruct(cls: Any, shape: Any, typecode: Any) -> np.ndarray:
    from numpy._core.multiarray import _reconstruct as real

    if cls is not _NDARRAY or not isinstance(typecode, bytes):
        raise UnsafePickleError("_reconstruct called with other than numpy.ndarray")
    return real(np.ndarray, (0,), b"b")


def _frombuffer(buffer: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    dtype = _plain(dtype, "_frombuffer")
    if not isinstance(buffer, (bytes, bytearray)) or not isinstance(shape, tuple) or order not in ("C", "F"):
        raise UnsafePickleError("_frombuffer called with other than bytes, a shape and an order")
    if any(not isinstance(n, int) or n < 0 for n in shape) or math.prod(shape) * dtype.itemsize != len(buffer):
        raise UnsafePickleError(f"an array of shape {shape} and type {dtype} does not fit its {len(buffer)} bytes")
    return np.frombuffer(bytes(buffer), dtype=dtype).reshape(shape, order=order).copy()


def _scalar(dtype: Any, data: Any) -> Any:
    from numpy._core.multiarray import scalar as real

    dtype = _plain(dtype, "scalar")
    if not isinstance(data, bytes) or len(data) != dtype.itemsize:
        raise UnsafePickleError(f"a scalar of type {dtype} needs {dtype.itemsize} bytes")
    return real(dtype, data)


def _dtype(spec: Any, align: Any = False, copy: Any = False) -> np.dtype:
    if not isinstance(spec, str) or len(spec) > 8:
        raise UnsafePickleError(f"dtype({spec!r}): only a short type code is admitted")
    try:
        # Always a new instance: the file's BUILD then sets its byte order on this copy, never on
        # NumPy's shared dtype singletons.
        return _plain(np.dtype(spec, align=False, copy=True), f"dtype({spec!r})")
    except TypeError as err:
        raise UnsafePickleError(f"dtype({spec!r}): {err}") from None


def _encode(text: Any, encoding: Any = "utf-8") -> bytes:
    if not isinstance(text, str) or encoding != "latin1":
        raise UnsafePickleError("_codecs.encode called with other than text and latin1")
    return codecs.encode(text, "latin1")


def _empty_bytes(*args: Any) -> bytes:
    if args:
        raise UnsafePickleError("bytes called with arguments")
    return b""


_CALLABLES = {
    ("_reconstruct", "multiarray"): _reconstruct,
    ("_frombuffer", "numeric"): _frombuffer,
    ("scalar", "multiarray"): _scalar,
}
ALLOWED: dict[tuple[str, str], Any] = {
    (f"{prefix}.{module}", name): fn
    for prefix in ("numpy.core", "numpy._core")
    for (name, module), fn in _CALLABLES.items()
}
ALLOWED.update(
    {
        ("numpy", "ndarray"): _NDARRAY,
        ("numpy", "dtype"): _dtype,
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("_codecs", "encode"): _encode,
        # protocols 0-2 write an empty bytes object as bytes()
        ("__builtin__", "bytes"): _empty_bytes,
        ("builtins", "bytes"): _empty_bytes,
    }
)


def _short(value: Any, limit: int = 80) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


class _NumpyOnlyUnpickler(pickle._Unpickler):
    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file, path: Path) -> None:
        super().__init__(file)
        self.path = path

    def find_class(self, module: str, name: str):
        if (module, name) not in ALLOWED:
            raise UnsafePickleError(
                f"{self.path}: refusing to load {_short(module)}.{_short(name)} (only NumPy arrays in plain "
                "containers are read from a pickle; it could run code)"
            )
        return ALLOWED[(module, name)]

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"{self.path}: refusing a persistent id in the pickle ({_short(repr(pid))})")

    def load_build(self) -> None:
        """``obj.__setstate__(state)``, only for a dtype or an array, with the state checked first."""
        state = self.stack[-1]
        target = self.stack[-2]
        if isinstance(target, np.dtype):
            # (version, byte order, subarray, names, fields, elsize, alignment, flags)
            if not (isinstance(state, tuple) and len(state) >= 5 and state[2] is None and state[3] is None):
                raise UnsafePickleError(f"{self.path}: a dtype state with fields or a subarray ({_short(state)})")
            if state[4] is not None or (len(state) > 7 and state[7] not in (0, None)):
                raise UnsafePickleError(f"{self.path}: a dtype state with fields or flags ({_short(state)})")
        elif isinstance(target, np.ndarray):
            # (version, shape, dtype, is_fortran, raw bytes)
            if not (isinstance(state, tuple) and len(state) == 5 and isinstance(state[4], (bytes, bytearray))):
                raise UnsafePickleError(f"{self.path}: an array state without raw bytes ({_short(state)})")
            _, shape, dtype, _, raw = state
            dtype = _plain(dtype, str(self.path))
            if not isinstance(shape, tuple) or any(not isinstance(n, int) or n < 0 for n in shape):
                raise UnsafePickleError(f"{self.path}: an array shape {_short(shape)}")
            if math.prod(shape) * dtype.itemsize != len(raw):
                raise UnsafePickleError(
                    f"{self.path}: an array of shape {shape} and type {dtype} does not fit its {len(raw)} bytes"
                )
        else:
            raise UnsafePickleError(f"{self.path}: refusing to set the state of a {type(target).__name__}")
        super().load_build()
        if isinstance(target, np.dtype):
            _plain(target, str(self.path))

    dispatch[pickle.BUILD[0]] = load_build


def load_numpy_pickle(path: str | Path) -> Any:
    """The object a pickle of plain NumPy arrays / dtypes / scalars in plain containers holds."""
    path = Path(path)
    with open(path, "rb") as f:
        try:
            return _NumpyOnlyUnpickler(f, path).load()
        except UnsafePickleError as err:
            if str(path) in str(err):
                raise
            raise UnsafePickleError(f"{path}: {err}") from None
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as err:
            raise UnsafePickleError(
                f"{path}: not a readable pickle of arrays ({type(err).__name__}: {_short(err, 200)})"
            ) from err
        except MemoryError as err:
            raise UnsafePickleError(f"{path}: asks for more memory than there is") from err
