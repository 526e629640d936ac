"""Loading a tessera checkpoint, run, weights file or store version into PyTorch."""
from collections import OrderedDict

import torch

from . import spec as specs
from .check import check_tensors
from .errors import TesseraFileError
from .h5read import read_model_file
from .locate import resolve
from .modules import build_module, expected_shapes


def read_spec(weights_path, meta, architecture_path=None):
    """The ModelSpec of a file: a store version's model.pbtxt when there is one (what a server
    builds from), else the file's own job_spec attribute."""
    try:
        if architecture_path is None:
            return specs.from_job_spec(meta["job_spec"], f"{weights_path} @job_spec", meta["step"])
        with open(architecture_path, encoding="utf-8", errors="replace") as f:
            text = f.read(1 << 20)
        return specs.from_architecture(text, architecture_path, meta["job_spec"], meta["step"])
    except OSError as e:
        raise TesseraFileError(architecture_path, f"cannot read the architecture: {e.strerror}") from None
    except ValueError as e:
        raise TesseraFileError(weights_path, f"cannot use the model spec it records: {e}") from None


def read_weights(path):
    """(state_dict, spec) of what `path` names (see locate.resolve): an OrderedDict of torch tensors
    at tessera's names (``1.weight``, ...), in model order, and the ModelSpec. Every check of the
    file (h5read) and of the tensors against the spec's network (check) comes before the return;
    each failure is a TesseraFileError naming the file and the tensor."""
    weights_path, architecture_path = resolve(path)
    meta, arrays = read_model_file(weights_path)
    if meta["dtype"] == "int8":
        raise TesseraFileError(weights_path, "is an int8 version (made by `tessera store quantize`, for serving); "
                                             "PyTorch modules take the f32 weights: load the version its lineage "
                                             "names as its parent")
    spec = read_spec(weights_path, meta, architecture_path)
    check_tensors(spec, arrays, weights_path)
    return OrderedDict((name, torch.from_numpy(arrays[name])) for name in expected_shapes(spec)), spec


def load_module(path):
    """The PyTorch network of `path` with its weights, in eval mode: a TesseraSequential, whose
    ``spec.normalize`` (and ``prepare``/``predict``) turn raw inputs into what tessera feeds it."""
    state, spec = read_weights(path)
    dtype = next(iter(state.values())).dtype
    net = build_module(spec, dtype)
    net.load_state_dict(state, strict=True)
    return net.eval()
