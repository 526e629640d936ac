"""tessera_torch: tessera's models in PyTorch and back (docs/pytorch.md).

    import tessera_torch as tt
    net = tt.load_module("runs/a")                       # or a checkpoint, a store version, store://ROOT/MODEL@alias
    logits = net.predict(raw_inputs)                     # pixels 0..255, CSV features: normalised as tessera does
    state, spec = tt.read_weights("runs/a")              # the tensors at tessera's names, and the architecture
    tt.save_weights(net, "tuned.h5")                     # then: tessera train JOB --set train.init_from=tuned.h5
"""
from .errors import TesseraFileError
from .load import load_module, read_weights
from .modules import TesseraSequential, build_module, expected_shapes
from .save import save_weights
from .spec import CnnSpec, MlpSpec, ModelSpec, Normalize, from_architecture, from_job_spec, to_job_spec

__version__ = "0.1.0"
__all__ = ["CnnSpec", "MlpSpec", "ModelSpec", "Normalize", "TesseraFileError", "TesseraSequential", "build_module",
           "expected_shapes", "from_architecture", "from_job_spec", "load_module", "read_weights", "save_weights",
           "to_job_spec"]
