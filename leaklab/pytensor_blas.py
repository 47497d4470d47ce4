"""Link pytensor (pymc's compiler) to the OpenBLAS that the scipy wheel already ships.

pip-installed pytensor finds no BLAS ("PyTensor could not link to a BLAS installation") and
falls back to slow dot products. The scipy wheel bundles OpenBLAS (`scipy.libs/libscipy_openblas*.so`)
with its symbols prefixed `scipy_` (`scipy_dgemm_`), so pytensor's C code is compiled with one
`-D<name>_=scipy_<name>_` macro per BLAS routine it calls and linked against that library.

`configure()` must run before pytensor is first imported; it adds `blas__ldflags` and the
macros to `PYTENSOR_FLAGS` and does nothing when the user already set `blas__ldflags`, when
pytensor is already imported, or when no bundled OpenBLAS is found. `LEAKLAB_PYTENSOR_BLAS=0`
turns it off.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

# every BLAS routine pytensor's C code declares (pytensor/tensor/blas_headers.py)
ROUTINES = tuple(
    f"{t}{r}_"
    for t in "sdcz"
    for r in ("axpy", "copy", "gemm", "gemv", "scal", "swap", "symm", "syrk", "trmm", "trmv", "trsm")
) + ("cgerc_", "cgeru_", "zgerc_", "zgeru_", "ddot_", "sdot_", "dger_", "sger_", "drot_", "srot_",
     "dsymv_", "ssymv_")


def bundled_openblas() -> Path | None:
    """The scipy wheel's OpenBLAS with 32-bit integers (LP64), or None."""
    spec = importlib.util.find_spec("scipy")
    if spec is None or not spec.submodule_search_locations:
        return None
    libs = Path(next(iter(spec.submodule_search_locations))).parent / "scipy.libs"
    found = sorted(p for p in libs.glob("libscipy_openblas*.so*") if "openblas64" not in p.name)
    return found[0] if found else None


def exports_all(lib: Path) -> bool:
    """Whether the library exports every prefixed routine the macros point to."""
    import ctypes

    try:
        handle = ctypes.CDLL(str(lib))
    except OSError:
        return False
    return all(hasattr(handle, f"scipy_{r}") for r in ROUTINES)


def flags(lib: Path) -> str:
    macros = " ".join(f"-D{r}=scipy_{r}" for r in ROUTINES)
    return (f"blas__ldflags=-L{lib.parent} -l:{lib.name} -Wl\\,-rpath\\,{lib.parent},"
            f"gcc__cxxflags={macros}")


def configure() -> bool:
    """Point pytensor at the bundled OpenBLAS (see the module docstring); True when it did."""
    current = os.environ.get("PYTENSOR_FLAGS", "")
    if (os.environ.get("LEAKLAB_PYTENSOR_BLAS", "1") == "0" or "pytensor" in sys.modules
            or "blas__ldflags" in current or "gcc__cxxflags" in current):
        return False
    lib = bundled_openblas()
    if lib is None or not exports_all(lib):
        return False
    os.environ["PYTENSOR_FLAGS"] = ",".join(x for x in (current, flags(lib)) if x)
    import warnings

    # pytensor looks for lib<name>.so in the -L folder and warns when the name is given as -l:FILE
    warnings.filterwarnings("ignore", message="We did not find a dynamic library")
    import logging

    logging.getLogger("pytensor.tensor.blas").setLevel(logging.ERROR)
    return True
