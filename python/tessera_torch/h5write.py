"""Writing a tessera.model weights file (format version 2, docs/checkpoint-format.md) as tessera
writes one: HDF5's 1.10 file format, fixed-length null-padded UTF-8 strings, the root attributes
format, format_version, tessera_version, created, step, job_spec and dtype (and
source_checkpoint when given), /model/<name> datasets contiguous and uncompressed with `crc32`
and `flat_offset` attributes (the offsets a checkpoint of the model records), and /manifest, the
JSON tensor list with a copy of the root attributes and a `crc32` of its own text. The file is
written under a temporary name beside `path`, fsynced and renamed into place.
"""
import datetime
import json
import os
import zlib

import h5py
import numpy as np

from .h5read import FORMAT_VERSION

WRITER = "tessera_torch 0.1.0"  # the root attribute tessera_version: who wrote the file
ALIGNMENT = 16  # elements: where each parameter starts in tessera's flat buffer (nn::FlatParameters)


def _utf8(value):
    """`value` as a fixed-length UTF-8 string of at least one byte (NULLPAD, as h5py writes it)."""
    raw = value.encode("utf-8")
    return np.array(raw, dtype=h5py.string_dtype("utf-8", max(1, len(raw))))


def root_attributes(step, job_spec, dtype):
    created = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"format": "tessera.model", "format_version": FORMAT_VERSION, "tessera_version": WRITER,
            "created": created, "step": int(step), "job_spec": job_spec, "dtype": dtype}


def _write_attributes(obj, attrs):
    for name, v in attrs.items():
        obj.attrs[name] = _utf8(v) if isinstance(v, str) else np.int64(v)


def _manifest_text(records, attrs):
    manifest = {"attributes": attrs, "format_version": FORMAT_VERSION, "tensors": records}
    return json.dumps(manifest, indent=1, sort_keys=True, ensure_ascii=False)


def _write_file(tmp, arrays, attrs, source):
    records, flat = [], 0
    with h5py.File(tmp, "w-", libver=("v110", "v110"), locking=False) as f:
        _write_attributes(f, attrs)
        if source:
            f.attrs["source_checkpoint"] = _utf8(source)
        model = f.create_group("model")
        for name, a in arrays.items():
            crc = zlib.crc32(a.tobytes())
            d = model.create_dataset(name, data=a)  # contiguous: no chunks, no filters
            d.attrs["crc32"] = np.uint32(crc)
            d.attrs["flat_offset"] = np.int64(flat)
            flat += -(-a.size // ALIGNMENT) * ALIGNMENT
            records.append({"bytes": a.nbytes, "crc32": crc, "dtype": a.dtype.name, "path": f"/model/{name}",
                            "shape": list(a.shape)})
        text = _manifest_text(records, attrs)
        m = f.create_dataset("manifest", data=_utf8(text))
        m.attrs["crc32"] = np.uint32(zlib.crc32(text.encode("utf-8")))


def write_weights_file(path, arrays, step, job_spec, source=None):
    """Writes `arrays` ({tessera name: C-contiguous little-endian float array}, model order) to
    `path` atomically; an existing file is replaced."""
    dtype = next(iter(arrays.values())).dtype.name
    attrs = root_attributes(step, job_spec, dtype)
    path = os.fspath(path)
    tmp = os.path.join(os.path.dirname(os.path.abspath(path)), f".{os.path.basename(path)}.tmp-{os.getpid()}")
    try:
        _write_file(tmp, arrays, attrs, source)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dfd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
