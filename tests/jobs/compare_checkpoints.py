#!/usr/bin/env python3
# compare_checkpoints.py bitwise A B: every /model and /optim dataset of A equals B's, bit for bit (same set).
# compare_checkpoints.py relnorm A B TOL: ||a - b|| / ||a|| over all /model tensors together <= TOL.
import sys
import h5py
import numpy as np

def tensors(path, prefixes):
    out = {}
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset) and name.split("/")[0] in prefixes:
                out["/" + name] = obj[()]
        f.visititems(visit)
    return out

mode, a_path, b_path = sys.argv[1:4]
if mode == "bitwise":
    a, b = tensors(a_path, ("model", "optim")), tensors(b_path, ("model", "optim"))
    if sorted(a) != sorted(b):
        sys.exit(f"different tensors: only in A {sorted(set(a) - set(b))}, only in B {sorted(set(b) - set(a))}")
    bad = []
    for k in sorted(a):
        x, y = a[k], b[k]
        if x.shape != y.shape or x.dtype != y.dtype or x.tobytes() != y.tobytes():
            diff = float(np.max(np.abs(x.astype(np.float64) - y.astype(np.float64)))) if x.shape == y.shape else float("nan")
            bad.append(f"{k} (max |a-b| {diff:.3g})")
    n_model = sum(k.startswith("/model/") for k in a)
    if bad:
        sys.exit(f"{len(bad)} of {len(a)} tensors differ: " + ", ".join(bad))
    print(f"bitwise equal: {len(a)} tensors ({n_model} /model, {len(a) - n_model} /optim), "
          f"{sum(v.size for v in a.values())} values")
else:
    tol = float(sys.argv[4])
    a, b = tensors(a_path, ("model",)), tensors(b_path, ("model",))
    if sorted(a) != sorted(b) or not a:
        sys.exit(f"different /model tensors: {sorted(a)} vs {sorted(b)}")
    num = sum(float(np.sum((a[k].astype(np.float64) - b[k].astype(np.float64)) ** 2)) for k in a)
    den = sum(float(np.sum(a[k].astype(np.float64) ** 2)) for k in a)
    rel = (num / den) ** 0.5
    worst = max(a, key=lambda k: float(np.linalg.norm((a[k].astype(np.float64) - b[k]).ravel())) /
                max(float(np.linalg.norm(a[k].ravel())), 1e-30))
    wr = float(np.linalg.norm((a[worst].astype(np.float64) - b[worst]).ravel())) / max(float(np.linalg.norm(a[worst].ravel())), 1e-30)
    print(f"relative norm {rel:.3g} over {len(a)} /model tensors (tolerance {tol:g}; worst tensor {worst}: {wr:.3g})")
    sys.exit(0 if rel <= tol else 1)
