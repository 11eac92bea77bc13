"""Element-wise helpers that work on Python numbers and on numpy arrays alike.

The memory formulas are written once and evaluated either for one plan
(plain floats) or for a whole grid of plans (numpy arrays); these helpers are
the only places that need to tell the two apart. numpy is never imported here:
an array argument brings its own module.
"""

from __future__ import annotations


def _is_array(x) -> bool:
    return hasattr(x, "__array_ufunc__") and not isinstance(x, (int, float))


def maximum(a, b):
    if _is_array(a) or _is_array(b):
        import numpy as np

        return np.maximum(a, b)
    return a if a >= b else b


def minimum(a, b):
    if _is_array(a) or _is_array(b):
        import numpy as np

        return np.minimum(a, b)
    return a if a <= b else b


def where(cond, a, b):
    if _is_array(cond) or _is_array(a) or _is_array(b):
        import numpy as np

        return np.where(cond, a, b)
    return a if cond else b
