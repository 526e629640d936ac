"""PyTorch networks laid out as tessera's BuildMlp and BuildCnn (core/models.cc) lay out theirs,
layer for layer, so that ``state_dict()`` has tessera's parameter names (``1.weight``: the
Linear after the leading Flatten of an MLP) and shapes (Linear weights [out, in], Conv2d weights
[out, in, k, k], as in PyTorch).
"""
from collections import OrderedDict

import torch
from torch import nn

from .spec import CnnSpec, MlpSpec


class TesseraSequential(nn.Sequential):
    """An nn.Sequential that knows its tessera spec: `prepare` turns raw inputs (pixels 0..255,
    CSV features) into what the network takes, `predict` runs both."""

    def __init__(self, spec, layers):
        super().__init__(*layers)
        self.spec = spec

    def prepare(self, raw):
        return self.spec.prepare(raw)

    def predict(self, raw):
        return self(self.prepare(raw).to(self._dtype()))

    def _dtype(self):
        return next(self.parameters()).dtype


def _mlp_layers(m, device):
    layers, width = [nn.Flatten()], m.in_features
    for h in m.hidden:
        act = nn.GELU(approximate="tanh") if m.activation == "GELU" else nn.ReLU()
        layers += [nn.Linear(width, h, device=device), act]
        if m.dropout > 0:
            layers.append(nn.Dropout(m.dropout))
        width = h
    return layers + [nn.Linear(width, m.out_features, device=device)]


def _cnn_layers(c, device):
    layers, ch, h, w = [], c.in_channels, c.height, c.width
    for out in c.channels:
        # tessera computes Conv -> ReLU -> MaxPool as Conv -> MaxPool -> ReLU (the same function),
        # and the layer indices, hence the parameter names, follow that order.
        conv = nn.Conv2d(ch, out, c.kernel, stride=1, padding=c.kernel // 2, device=device)
        layers += [conv, nn.MaxPool2d(2), nn.ReLU()]
        ch, h, w = out, h // 2, w // 2
    layers.append(nn.Flatten())
    width = ch * h * w
    for hid in c.hidden:
        layers += [nn.Linear(width, hid, device=device), nn.ReLU()]
        if c.dropout > 0:
            layers.append(nn.Dropout(c.dropout))
        width = hid
    return layers + [nn.Linear(width, c.out_features, device=device)]


def _layers(spec, device):
    if isinstance(spec.family, MlpSpec):
        return _mlp_layers(spec.family, device)
    if isinstance(spec.family, CnnSpec):
        return _cnn_layers(spec.family, device)
    raise TypeError(f"no tessera model family {type(spec.family).__name__}")


def build_module(spec, dtype=torch.float32):
    """The network of `spec` (a ModelSpec), freshly initialised by PyTorch, in eval mode."""
    return TesseraSequential(spec, _layers(spec, None)).to(dtype).eval()


def expected_shapes(spec):
    """{tessera name: shape} of every parameter the network of `spec` has, in model order (built
    on PyTorch's meta device: nothing is allocated, however large the spec says the model is)."""
    net = TesseraSequential(spec, _layers(spec, torch.device("meta")))
    return OrderedDict((k, tuple(v.shape)) for k, v in net.state_dict().items())
