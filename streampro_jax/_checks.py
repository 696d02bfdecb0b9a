"""Argument checks at the entry of the public math functions (chex, with the argument named).

Every check raises ArgumentError, a ValueError (and an AssertionError, as chex raises) whose
message starts with "<function>: <argument>: ". Checks look only at static shapes and dtypes, so
they cost nothing under jax.jit; `in_range` looks at values, and only when they are concrete
(never inside a traced function).
"""

from __future__ import annotations

from collections.abc import Sequence

import chex
import numpy as np

__all__ = ["ArgumentError", "floating", "floating_or_bool", "in_range", "integer", "rank", "shape"]


class ArgumentError(ValueError, AssertionError):
  """A bad argument of a public math function; the message names the function and argument."""


def _wrap(fn: str, name: str, check, *args, **kwargs) -> None:
  try:
    check(*args, **kwargs)
  except AssertionError as e:
    msg = str(e).replace("[Chex] ", "")
    raise ArgumentError(f"{fn}: {name}: {msg}") from None


def rank(fn: str, name: str, x, ranks: int | Sequence[int]) -> None:
  _wrap(fn, name, chex.assert_rank, x, ranks)


def shape(fn: str, name: str, x, expected: Sequence[int | None], what: str = "") -> None:
  """x.shape must equal `expected` (None entries: any size); `what` explains the expectation."""
  try:
    chex.assert_shape(x, tuple(expected))
  except AssertionError:
    raise ArgumentError(f"{fn}: {name} has shape {tuple(np.shape(x))}, expected "
                        f"{tuple(expected)}{' ' + what if what else ''}") from None


def integer(fn: str, name: str, x) -> None:
  _wrap(fn, name, chex.assert_type, x, int)


def floating(fn: str, name: str, x) -> None:
  _wrap(fn, name, chex.assert_type, x, float)


def floating_or_bool(fn: str, name: str, x) -> None:
  dtype = np.dtype(x.dtype if hasattr(x, "dtype") else np.asarray(x).dtype)
  if not (np.issubdtype(dtype, np.floating) or np.issubdtype(dtype, np.integer)
          or dtype == np.bool_ or str(dtype) == "bfloat16"):
    raise ArgumentError(f"{fn}: {name} has dtype {dtype}; expected a float, int or bool mask")


def in_range(fn: str, name: str, x, lo: float, hi: float, where=None) -> None:
  """Every value of `x` (where the bool array `where` is True) lies in [lo, hi]; skipped when `x`
  or `where` is traced (under jit / vmap the values are not known)."""
  import jax  # pylint: disable=g-import-not-at-top
  if isinstance(x, jax.core.Tracer) or isinstance(where, jax.core.Tracer):
    return
  v = np.asarray(x, np.float64)
  if where is not None:
    v = v[np.broadcast_to(np.asarray(where, bool), v.shape)]
  bad = v[~((v >= lo) & (v <= hi))]
  if bad.size:
    raise ArgumentError(f"{fn}: {name} holds {bad.size} value(s) outside [{lo:g}, {hi:g}] "
                        f"(e.g. {bad.flat[0]:g}); it is a score in [{lo:g}, {hi:g}]")
