"""What tessera records about a model: its architecture (core/model_spec.proto) and how its
inputs are prepared (data.normalize), with every default of the proto and of the trainer's
FillDefaults (jobs/spec.cc) applied where a field is absent.

A spec is read from a job spec (the ``job_spec`` attribute of a checkpoint or weights file) or
from a store version's ``model.pbtxt`` (tessera.store.Architecture), and written back as a job
spec when weights that came from elsewhere are saved.
"""
from dataclasses import dataclass, field, replace
from typing import Optional, Tuple, Union

import torch

from . import prototext


@dataclass(frozen=True)
class MlpSpec:
    """Flatten -> [Linear -> activation (-> Dropout)] per hidden size -> Linear."""
    in_features: int = 784
    hidden: Tuple[int, ...] = (512, 256)
    out_features: int = 10
    dropout: float = 0.0
    activation: str = "RELU"  # or "GELU" (the tanh approximation)


@dataclass(frozen=True)
class CnnSpec:
    """[Conv2d(k, pad k/2) -> MaxPool2d(2) -> ReLU] per channel count -> Flatten ->
    [Linear -> ReLU (-> Dropout)] per hidden size -> Linear."""
    in_channels: int = 1
    height: int = 28
    width: int = 28
    channels: Tuple[int, ...] = (32, 64)
    kernel: int = 3
    hidden: Tuple[int, ...] = (128,)
    out_features: int = 10
    dropout: float = 0.0


@dataclass(frozen=True)
class Normalize:
    """x * scale, then (x - mean) / std per channel (dim 1), one value or one per channel."""
    scale: float = 1.0
    mean: Tuple[float, ...] = ()
    std: Tuple[float, ...] = ()

    def apply(self, x):
        """`x` [n, C, ...] prepared as tessera's loader and server prepare it (float32)."""
        x = torch.as_tensor(x).to(torch.float32)
        f32 = lambda v: torch.tensor(v, dtype=torch.float32)  # noqa: E731: tessera computes in float32
        if self.scale == 1.0 and not self.mean and not self.std:
            return x
        if x.dim() < 2:
            raise ValueError(f"normalize: expected inputs [n, C, ...], got shape {list(x.shape)}")
        per_channel = [1, x.shape[1]] + [1] * (x.dim() - 2)
        mean = f32(self.mean or [0.0]).reshape(-1)
        std = f32(self.std or [1.0]).reshape(-1)
        for name, v in (("mean", mean), ("std", std)):
            if v.numel() not in (1, x.shape[1]):
                raise ValueError(f"normalize.{name} has {v.numel()} values for {x.shape[1]} channels")
        shape = lambda v: v.reshape(per_channel) if v.numel() > 1 else v  # noqa: E731
        return (x * f32(self.scale) - shape(mean)) / shape(std)


@dataclass(frozen=True)
class ModelSpec:
    """A model as tessera builds it, and how to prepare its raw inputs."""
    family: Union[MlpSpec, CnnSpec]
    normalize: Normalize = field(default_factory=Normalize)
    input_shape: Tuple[int, ...] = ()  # one example; () means the shape the family implies
    input_dtype: str = "FP32"  # "UINT8" for IDX images
    job_spec: Optional[str] = None  # the job spec text it came from, written back by save_weights
    step: int = 0

    def __post_init__(self):
        validate(self.family)
        if not self.input_shape:
            object.__setattr__(self, "input_shape", implied_input_shape(self.family))

    @property
    def kind(self):
        return "mlp" if isinstance(self.family, MlpSpec) else "cnn"

    def prepare(self, raw):
        """Raw inputs (as the dataset holds them; [n, ...] of any shape with the example's number of
        values) reshaped to [n, *input_shape] and normalised: what tessera feeds the network."""
        x = torch.as_tensor(raw)
        return self.normalize.apply(x.reshape((x.shape[0],) + tuple(self.input_shape)))

    def with_family(self, **changes):
        return replace(self, family=replace(self.family, **changes), job_spec=None)


def implied_input_shape(family):
    if isinstance(family, CnnSpec):
        return (family.in_channels, family.height, family.width)
    return (family.in_features,)


def validate(f):
    """ValueError naming the field when `f` is not a model tessera would build."""
    kind = "mlp" if isinstance(f, MlpSpec) else "cnn"
    def need(ok, name, what):
        if not ok:
            raise ValueError(f"model.{kind}.{name} {what} (got {getattr(f, name)!r})")
    need(f.out_features > 0, "out_features", "must be > 0")
    need(len(f.hidden) > 0 and all(h > 0 for h in f.hidden), "hidden", "entries must be > 0")
    need(0 <= f.dropout < 1, "dropout", "must be in [0, 1)")
    if isinstance(f, MlpSpec):
        need(f.in_features > 0, "in_features", "must be > 0")
        need(f.activation in ("RELU", "GELU"), "activation", "must be RELU or GELU")
        return
    need(f.in_channels > 0, "in_channels", "must be > 0")
    need(f.height > 0 and f.width > 0, "height", "and width must be > 0")
    need(f.kernel >= 1 and f.kernel % 2 == 1, "kernel", "must be odd and >= 1")
    need(len(f.channels) > 0 and all(c > 0 for c in f.channels), "channels", "entries must be > 0")
    stages = len(f.channels)
    need(f.height >> stages >= 1 and f.width >> stages >= 1, "channels",
         f"has {stages} pooling stages, which shrink a {f.height}x{f.width} input below 1x1")


# ---- reading --------------------------------------------------------------------------------

def _one(msg, name, default, convert):
    values = msg.get(name, [])
    return convert(values[-1]) if values else default  # proto2 text: the last value wins


def _many(msg, name, default, convert):
    values = msg.get(name, [])
    return tuple(convert(v) for v in values) if values else default


def _family(model, where):
    if not isinstance(model, dict) or not (set(model) & {"mlp", "cnn"}):
        raise ValueError(f"{where}: the model section names no family tessera_torch builds (mlp or cnn; "
                         "not gpt yet)")
    if "mlp" in model:
        m = model["mlp"][-1]
        d = MlpSpec()
        return MlpSpec(_one(m, "in_features", d.in_features, int), _many(m, "hidden", d.hidden, int),
                       _one(m, "out_features", d.out_features, int), _one(m, "dropout", d.dropout, float),
                       _one(m, "activation", d.activation, _activation))
    c, d = model["cnn"][-1], CnnSpec()
    return CnnSpec(*(_one(c, k, getattr(d, k), int) for k in ("in_channels", "height", "width")),
                   _many(c, "channels", d.channels, int), _one(c, "kernel", d.kernel, int),
                   _many(c, "hidden", d.hidden, int), _one(c, "out_features", d.out_features, int),
                   _one(c, "dropout", d.dropout, float))


def _activation(v):
    return {0: "RELU", 1: "GELU"}.get(v, v)


def _normalize(msg):
    n = msg.get("normalize", [{}])[-1]
    return Normalize(_one(n, "scale", 1.0, float), _many(n, "mean", (), float), _many(n, "std", (), float))


def _message(text, where):
    try:
        return prototext.parse(text, where)
    except prototext.ProtoTextError as e:
        raise ValueError(str(e)) from None


def from_job_spec(text, where="job_spec", step=0):
    """The spec of a job spec's model and data sections (data.kind IDX, the default: UINT8 inputs)."""
    job = _message(text, where)
    if "model" not in job:
        raise ValueError(f"{where}: the job spec has no model section")
    data = job.get("data", [{}])[-1]
    kind = _one(data, "kind", "IDX", lambda v: {0: "IDX", 1: "CSV", 2: "HDF5"}.get(v, v))
    return ModelSpec(_family(job["model"][-1], where), _normalize(data), (),
                     "UINT8" if kind == "IDX" else "FP32", text, step)


def from_architecture(text, where="model.pbtxt", job_spec=None, step=0):
    """The spec of a store version's model.pbtxt (tessera.store.Architecture)."""
    a = _message(text, where)
    if "model" not in a:
        raise ValueError(f"{where}: the architecture has no model section")
    return ModelSpec(_family(a["model"][-1], where), _normalize(a), _many(a, "input_shape", (), int),
                     _one(a, "input_dtype", "FP32", str), job_spec, step)


# ---- writing --------------------------------------------------------------------------------

def to_job_spec(spec, name="pytorch"):
    """A job spec holding `spec`'s model and normalisation, for weights that have none."""
    f = spec.family
    ints = lambda k, vs: " ".join(f"{k}: {int(v)}" for v in vs)  # noqa: E731
    if isinstance(f, MlpSpec):
        body = (f"mlp {{ in_features: {f.in_features} {ints('hidden', f.hidden)} out_features: {f.out_features} "
                f"dropout: {f.dropout!r} activation: {f.activation} }}")
    else:
        body = (f"cnn {{ in_channels: {f.in_channels} height: {f.height} width: {f.width} "
                f"{ints('channels', f.channels)} kernel: {f.kernel} {ints('hidden', f.hidden)} "
                f"out_features: {f.out_features} dropout: {f.dropout!r} }}")
    n = spec.normalize
    norm = " ".join([f"scale: {n.scale!r}"] + [f"mean: {v!r}" for v in n.mean] + [f"std: {v!r}" for v in n.std])
    kind = "IDX" if spec.input_dtype == "UINT8" else "CSV"
    return f'name: "{name}"\nmodel {{ {body} }}\ndata {{ kind: {kind} normalize {{ {norm} }} }}\n'
