"""Tensors against the architecture they are said to belong to: every parameter the network of
the spec has, at its shape and of one float dtype, and nothing else."""
import numpy as np
import torch

from .errors import TesseraFileError
from .modules import expected_shapes

FLOAT_DTYPES = (np.float32, np.float64, torch.float32, torch.float64)


def check_tensors(spec, tensors, where):
    """TesseraFileError naming `where` and the tensor when `tensors` ({name: array or tensor})
    do not fit `spec`'s network; the check runs on shapes alone, before anything is copied."""
    want = expected_shapes(spec)
    missing = [n for n in want if n not in tensors]
    extra = [n for n in tensors if n not in want]
    model = f"the {spec.kind} of the spec ({', '.join(want)})"
    if missing:
        raise TesseraFileError(where, f"/model/{missing[0]}: missing; {model} needs it"
                                      + (f" (also missing: {', '.join(missing[1:])})" if missing[1:] else ""))
    if extra:
        raise TesseraFileError(where, f"/model/{extra[0]}: not a parameter of {model}")
    dtypes = set()
    for name, shape in want.items():
        t = tensors[name]
        if tuple(t.shape) != shape:
            raise TesseraFileError(where, f"/model/{name}: has shape {list(t.shape)} but the {spec.kind} of the spec "
                                          f"has shape {list(shape)}")
        if t.dtype not in FLOAT_DTYPES:
            raise TesseraFileError(where, f"/model/{name}: is {t.dtype}; tessera's weights are float32 or float64")
        dtypes.add(str(t.dtype).replace("torch.", ""))
    if len(dtypes) > 1:
        raise TesseraFileError(where, f"the tensors mix dtypes {sorted(dtypes)}; tessera's weights share one")
