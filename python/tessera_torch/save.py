"""Bringing PyTorch weights back to tessera: a state_dict (or a module) written as a tessera.model
weights file, which `tessera train --set train.init_from=PATH` starts from and
`tessera store publish PATH` publishes."""
import os
from collections import OrderedDict

import numpy as np
import torch

from . import spec as specs
from .check import check_tensors
from .errors import TesseraFileError
from .h5read import read_model_file
from .h5write import write_weights_file
from .modules import expected_shapes


def _arrays(state, spec, where):
    """The tensors of `state` in model order as C-contiguous little-endian numpy arrays, each
    checked to be finite (tessera refuses to train from or publish NaN and infinity)."""
    out = OrderedDict()
    for name in expected_shapes(spec):
        t = state[name].detach().to("cpu") if isinstance(state[name], torch.Tensor) else torch.as_tensor(state[name])
        a = np.ascontiguousarray(t.numpy(), dtype=t.numpy().dtype.newbyteorder("<"))
        if not np.isfinite(a).all():
            raise TesseraFileError(where, f"/model/{name}: holds NaN or infinity; tessera cannot train from it or "
                                          "serve it")
        out[name] = a
    return out


def save_weights(state, path, spec=None, step=None, source=None):
    """Writes `state` (a state_dict, or a module: its state_dict) to `path` as a tessera.model
    weights file of `spec`'s architecture (default: the module's own ``spec``, as load_module
    attaches it). The file records `spec`'s job spec (the one it was read with, else one made from
    the spec), `step` (default: the spec's) and `source` (informational, as `source_checkpoint`).
    The tensors are checked against the architecture first and the file is read back afterwards;
    a TesseraFileError names what does not fit. Returns `path`."""
    spec = spec if spec is not None else getattr(state, "spec", None)
    if spec is None:
        raise TypeError("save_weights: which architecture? pass spec= (a ModelSpec, e.g. from read_weights)")
    if isinstance(state, torch.nn.Module):
        state = state.state_dict()
    where = f"save_weights({os.fspath(path)})"
    check_tensors(spec, state, where)
    arrays = _arrays(state, spec, where)
    job_spec = spec.job_spec if spec.job_spec is not None else specs.to_job_spec(spec)
    write_weights_file(path, arrays, spec.step if step is None else step, job_spec, source)
    _, back = read_model_file(os.fspath(path))  # as a reader will read it: structure, manifest, CRCs
    for name, a in arrays.items():
        if not np.array_equal(back[name], a):
            raise TesseraFileError(path, f"/model/{name}: reads back different from what was written")
    return path
