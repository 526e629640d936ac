"""Finding the weights file (and a store version's architecture) that a path names, the way the
tessera command finds them: a checkpoint or weights file, a step directory, a checkpoints
directory (its `latest`), a run directory (its checkpoints/latest), a store version directory,
a store model directory (its highest version), or a store reference
``store://ROOT/MODEL[@VERSION|@ALIAS|@latest]`` / ``store://ROOT/MODEL/VERSION`` (docs/model-store.md).
"""
import os
import re

from . import prototext
from .errors import TesseraFileError

_VERSION = re.compile(r"[1-9][0-9]*$")
_STEP = re.compile(r"step-([0-9]+)$")


def resolve(ref):
    """(weights or checkpoint file, model.pbtxt of a store version or None) for `ref`."""
    ref = os.fspath(ref)
    if ref.startswith("store://"):
        return _version_files(_store_version(ref))
    if os.path.isfile(ref) or not os.path.exists(ref):
        return ref, None  # a file, or a path the reader will name as missing
    if os.path.isfile(os.path.join(ref, "weights.h5")) and os.path.isfile(os.path.join(ref, "model.pbtxt")):
        return _version_files(ref)
    if _versions(ref):
        return _version_files(os.path.join(ref, str(max(_versions(ref)))))
    return _checkpoint_in(ref), None


def _version_files(version_dir):
    return os.path.join(version_dir, "weights.h5"), os.path.join(version_dir, "model.pbtxt")


def _versions(model_dir):
    return [int(n) for n in os.listdir(model_dir) if _VERSION.match(n) and os.path.isdir(os.path.join(model_dir, n))]


def _checkpoint_in(d):
    for candidate in ("checkpoint.h5", "latest", os.path.join("checkpoints", "latest")):
        p = os.path.join(d, candidate)
        if os.path.isfile(p):
            return p
    for ckpts in (d, os.path.join(d, "checkpoints")):
        steps = [n for n in os.listdir(ckpts) if _STEP.match(n)] if os.path.isdir(ckpts) else []
        for n in sorted(steps, key=lambda n: int(_STEP.match(n).group(1)), reverse=True):
            if os.path.isfile(os.path.join(ckpts, n, "checkpoint.h5")):
                return os.path.join(ckpts, n, "checkpoint.h5")
    raise TesseraFileError(d, "no checkpoint or model there (expected a checkpoint file, a step-N directory, a "
                              "checkpoints directory, a run directory or a store version directory)")


def _store_version(ref):
    """The version directory of a store:// reference."""
    rest, name = ref[len("store://"):], None
    m = re.match(r"(.*)@([^/@]+)$", rest)
    if m:
        rest, name = m.groups()
    elif re.search(r"/[1-9][0-9]*/*$", rest):
        rest, name = rest.rstrip("/").rsplit("/", 1)
    rest = rest.rstrip("/")
    if "/" not in rest:
        raise TesseraFileError(ref, "a store:// reference names the store root and the model: "
                                    "store://ROOT/MODEL[@VERSION|@ALIAS]")
    model_dir = rest
    model = os.path.basename(model_dir)
    if not os.path.isdir(model_dir):
        raise TesseraFileError(ref, f"no model '{model}' in the store {os.path.dirname(model_dir)}")
    versions = sorted(_versions(model_dir))
    if not versions:
        raise TesseraFileError(ref, f"model '{model}' has no published version")
    if name in (None, "latest"):
        return os.path.join(model_dir, str(versions[-1]))
    version = int(name) if _VERSION.match(name) else _alias_target(model_dir, name, ref)
    if version not in versions:
        listed = ", ".join(map(str, versions))
        raise TesseraFileError(ref, f"model '{model}' has no version {version} (versions: {listed})")
    return os.path.join(model_dir, str(version))


def _alias_target(model_dir, alias, ref):
    path = os.path.join(model_dir, "aliases", alias)
    if not re.match(r"[A-Za-z][A-Za-z0-9._-]*$", alias) or not os.path.isfile(path):
        raise TesseraFileError(ref, f"model '{os.path.basename(model_dir)}' has no alias '{alias}'")
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            version = prototext.parse(f.read(64 << 10), path).get("version", [None])[-1]
    except prototext.ProtoTextError as e:
        raise TesseraFileError(path, f"is not an alias file: {e}") from None
    if not isinstance(version, int) or version <= 0:
        raise TesseraFileError(path, "names no version")
    return version
