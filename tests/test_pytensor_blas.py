"""pytensor linked to the OpenBLAS inside the scipy wheel (leaklab/pytensor_blas.py)."""

import os
import subprocess
import sys

import pytest

from leaklab import pytensor_blas

CHILD = """
import numpy as np
from leaklab.pytensor_blas import configure
assert configure()
import pytensor, pytensor.tensor as pt
assert pytensor.config.blas__ldflags, "no ldflags"
x, v = pt.dmatrix(), pt.dvector()
f = pytensor.function([x, v], x @ v)
ops = {type(n.op).__name__ for n in f.maker.fgraph.apply_nodes}
a = np.arange(12.0).reshape(3, 4)
assert np.allclose(f(a, np.ones(4)), a @ np.ones(4))
print(sorted(ops))
"""


@pytest.mark.skipif(pytensor_blas.bundled_openblas() is None, reason="this scipy wheel bundles no LP64 OpenBLAS")
def test_pytensor_compiles_blas_ops_against_the_bundled_openblas():
    # pytensor's own compile cache: the C modules are built once per machine, not per test run
    env = {k: v for k, v in os.environ.items() if k not in ("PYTENSOR_FLAGS", "LEAKLAB_PYTENSOR_BLAS")}
    r = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "CGemv" in r.stdout  # the C BLAS op, which pytensor only uses when it links a BLAS
    assert "could not link to a BLAS" not in r.stderr


def test_configure_leaves_explicit_settings_alone(monkeypatch):
    monkeypatch.setenv("PYTENSOR_FLAGS", "blas__ldflags=-lmyblas")
    assert not pytensor_blas.configure()
    assert os.environ["PYTENSOR_FLAGS"] == "blas__ldflags=-lmyblas"
    monkeypatch.delenv("PYTENSOR_FLAGS")
    monkeypatch.setenv("LEAKLAB_PYTENSOR_BLAS", "0")
    assert not pytensor_blas.configure()
    assert "PYTENSOR_FLAGS" not in os.environ
