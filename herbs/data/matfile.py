"""MATLAB .mat files (Stanford Cars' and Stanford Dogs' annotations), read with scipy."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from herbs.errors import DataError
from herbs.data.source import require_file


def read_mat(path: Path, *names: str) -> dict[str, np.ndarray]:
    """The variables `names` of a .mat file, squeezed to 1-D arrays (struct arrays keep their fields)."""
    try:
        from scipy.io import loadmat  # imported here: only these readers need scipy
    except ImportError:
        raise DataError(f"reading '{path}' needs scipy; `pip install scipy`") from None
    try:
        data = loadmat(require_file(path, "annotation file"), squeeze_me=True)
    except (ValueError, TypeError, OSError) as err:
        raise DataError(f"'{path}' is not a readable .mat file ({err}); restore it from the dataset's archive") from None
    missing = [name for name in names if name not in data]
    if missing:
        raise DataError(f"'{path}' has no variable '{missing[0]}'; restore the file from the dataset's archive")
    return {name: np.atleast_1d(data[name]) for name in names}


def field(records: np.ndarray, name: str, path: Path) -> list:
    """One field of a struct array, as a list of Python values."""
    if records.dtype.names is None or name not in records.dtype.names:
        raise DataError(f"the annotations in '{path}' have no field '{name}'; restore the file from the dataset's archive")
    return [value.item() if isinstance(value, np.ndarray) else value for value in records[name]]
