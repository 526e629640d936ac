"""Reading the /model tensors of a tessera HDF5 file (a checkpoint or a tessera.model weights
file; docs/checkpoint-format.md), treating the file as hostile, as tessera's own reader does:
the root attributes and /manifest are checked before any tensor is read, each dataset must be a
hard link with the manifest's shape and dtype, stored contiguous and uncompressed in the file,
and every tensor's CRC-32 must match both the manifest and its `crc32` attribute.
"""
import json
import os
import stat
import zlib
from collections import OrderedDict

import h5py
import numpy as np

from .errors import TesseraFileError

FORMATS = ("tessera.checkpoint", "tessera.model")
FORMAT_VERSION = 2  # the newest this package reads and writes
DTYPES = {"float32": np.dtype("<f4"), "float64": np.dtype("<f8"), "int8": np.dtype("i1")}  # int8: quantised
MAX_MANIFEST_BYTES = 64 << 20  # far more than any manifest: a larger one is a crafted file
MAX_COMPACT_BYTES = 65536  # HDF5 keeps compact data in the object header, which holds at most 64 KiB


def open_hdf5(path):
    """`path` opened read-only, after checking it is a non-empty regular file with HDF5's signature."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise TesseraFileError(path, e.strerror.lower() if e.strerror else str(e)) from None
    if stat.S_ISDIR(st.st_mode):
        raise TesseraFileError(path, "is a directory, not an HDF5 file")
    if not stat.S_ISREG(st.st_mode):
        raise TesseraFileError(path, "is not a regular file (a FIFO, device or socket); refusing to read it")
    if st.st_size == 0:
        raise TesseraFileError(path, "is empty (0 bytes): not an HDF5 file")
    if not h5py.is_hdf5(path):
        raise TesseraFileError(path, "not an HDF5 file (no HDF5 signature): not a tessera checkpoint or weights file")
    try:
        return h5py.File(path, "r", locking=False)
    except OSError as e:
        raise TesseraFileError(path, f"cannot be opened as HDF5 (truncated or damaged?): {e}") from None


def _attr(f, path, name, kind):
    """Root attribute `name`: one value of `kind` (int or str)."""
    if name not in f.attrs:
        raise TesseraFileError(path, f"root attribute '{name}' is missing: not a tessera file")
    v = f.attrs[name]
    if isinstance(v, np.ndarray) and v.shape != ():
        raise TesseraFileError(path, f"@{name}: holds {v.size} values; expected a single {kind.__name__}")
    if kind is str:
        if isinstance(v, (bytes, np.bytes_)):
            return bytes(v).decode("utf-8", errors="replace")
        if isinstance(v, str):
            return v
    elif isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)):
        return int(v)
    raise TesseraFileError(path, f"@{name}: is {type(v).__name__}; expected a {kind.__name__}")


def read_meta(f, path):
    """The root attributes a reader needs: format, format_version, step, job_spec, dtype."""
    fmt = _attr(f, path, "format", str) if "format" in f.attrs else None
    if fmt not in FORMATS:
        what = "has no 'format' attribute" if fmt is None else f"has format '{fmt[:100]}'"
        raise TesseraFileError(path, f"not a tessera checkpoint or weights file (the root {what})")
    version = _attr(f, path, "format_version", int)
    if version > FORMAT_VERSION:
        raise TesseraFileError(path, f"written in {fmt} format version {version}; this reader reads versions up to "
                                     f"{FORMAT_VERSION}: use a newer tessera_torch")
    if version < 1:
        raise TesseraFileError(path, f"invalid format_version {version}")
    meta = {"format": fmt, "format_version": version, "step": _attr(f, path, "step", int),
            "job_spec": _attr(f, path, "job_spec", str), "dtype": _attr(f, path, "dtype", str)}
    if meta["step"] < 0:
        raise TesseraFileError(path, f"@step: {meta['step']} is negative")
    return meta


def _u32_attr(obj, path, at, name="crc32"):
    """Attribute `name` of `obj`: one integer of 0..2^32-1, or None when it is missing."""
    if name not in obj.attrs:
        return None
    v = obj.attrs[name]
    if isinstance(v, np.ndarray):
        if v.shape != ():
            raise TesseraFileError(path, f"{at}: the {name} attribute holds {v.size} values; expected one 32-bit "
                                         "unsigned integer")
        v = v[()]
    if not isinstance(v, (int, np.integer)) or isinstance(v, (bool, np.bool_)) or not 0 <= int(v) <= 0xFFFFFFFF:
        raise TesseraFileError(path, f"{at}: the {name} attribute is {type(v).__name__} {str(v)[:100]}; expected a "
                                     "32-bit unsigned integer")
    return int(v)


def _string_dataset(f, path, name):
    """The one string of dataset /`name`: a hard link, a scalar string of at most MAX_MANIFEST_BYTES whose bytes
    lie in the file, checked before it is read."""
    at = f"/{name}"
    d = _hard_link_dataset(f, path, at)
    info = h5py.check_string_dtype(d.dtype)
    if info is None or d.shape != ():
        raise TesseraFileError(path, f"{at}: is not one string (a dataset of shape {list(d.shape or [])} of "
                                     f"{d.dtype})")
    if info.length is not None:  # fixed-length: the bytes themselves lie in the dataset's storage
        nbytes = d.dtype.itemsize
    else:  # variable-length (format version 1): the storage holds the length, then where the bytes lie
        _check_storage(d, path, at, 16, compact=False)
        with open(path, "rb") as raw:
            raw.seek(d.id.get_offset())
            nbytes = int.from_bytes(raw.read(4), "little")
    if nbytes > MAX_MANIFEST_BYTES:
        raise TesseraFileError(path, f"{at}: is a string of {nbytes} bytes (at most {MAX_MANIFEST_BYTES}): not "
                                     "a tessera file")
    if info.length is not None:
        _check_storage(d, path, at, nbytes)
    v = d[()]
    return v if isinstance(v, bytes) else str(v).encode("utf-8")


def read_manifest(f, path, fmt):
    """The /manifest's /model entries, each checked: [{path, shape, dtype, bytes, crc32}]."""
    if _link_type(f, "manifest") is None:
        raise TesseraFileError(path, "/manifest is missing (not a complete tessera file)")
    text = _string_dataset(f, path, "manifest")
    stored = _u32_attr(f["manifest"], path, "/manifest")
    if stored is None or stored != zlib.crc32(text):
        raise TesseraFileError(path, "/manifest: its crc32 attribute is missing or does not match: "
                                     "the manifest is corrupt")
    try:
        man = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise TesseraFileError(path, f"/manifest is not valid JSON: {e}") from None
    if not isinstance(man, dict) or not isinstance(man.get("tensors"), list):
        raise TesseraFileError(path, "/manifest has no 'tensors' list")
    entries = [_entry(t, i, path) for i, t in enumerate(man["tensors"])]
    paths = [t["path"] for t in entries]
    if len(set(paths)) != len(paths):
        raise TesseraFileError(path, "/manifest lists a tensor twice")
    model = [t for t in entries if t["path"].startswith("/model/")]
    if fmt == "tessera.model" and len(model) != len(entries):
        other = next(t["path"] for t in entries if not t["path"].startswith("/model/"))
        raise TesseraFileError(path, f"/manifest lists {other}; a model file holds /model tensors only")
    if not model:
        raise TesseraFileError(path, "holds no /model tensors")
    return model


def _entry(t, i, path):
    at = f"/manifest: tensor #{i}"
    if not isinstance(t, dict) or not all(k in t for k in ("path", "shape", "dtype", "bytes", "crc32")):
        raise TesseraFileError(path, f"{at}: is not an object with path, shape, dtype, bytes and crc32")
    p, shape, dtype = t["path"], t["shape"], t["dtype"]
    if not isinstance(p, str) or not p.startswith("/") or "//" in p or p.endswith("/") or "\0" in p:
        raise TesseraFileError(path, f"{at}: path {str(p)[:200]!r} is not an HDF5 dataset path like /model/0.weight")
    at += f" ({p})"
    if not isinstance(shape, list) or len(shape) > 8 or not all(type(d) is int and d >= 0 for d in shape):
        raise TesseraFileError(path, f"{at}: 'shape' is not a list of at most 8 sizes >= 0")
    if dtype not in DTYPES:
        raise TesseraFileError(path, f"{at}: dtype {dtype!r} is not \"float32\", \"float64\" or \"int8\"")
    nbytes = int(np.prod(shape, dtype=object)) * DTYPES[dtype].itemsize
    if t["bytes"] != nbytes:
        raise TesseraFileError(path, f"{at}: 'bytes' is {t['bytes']} but shape {shape} of {dtype} is {nbytes} bytes")
    if type(t["crc32"]) is not int or not 0 <= t["crc32"] <= 0xFFFFFFFF:
        raise TesseraFileError(path, f"{at}: crc32 {t['crc32']!r} is not a 32-bit unsigned value")
    return {"path": p, "shape": tuple(shape), "dtype": dtype, "bytes": nbytes, "crc32": t["crc32"]}


def _link_type(group, name):
    """The type of the link `name` in `group` (h5py.h5l.TYPE_HARD, ...) or None: the link itself, never followed
    (h5py's `name in group` and group.get(name, getlink=True) follow soft and external links)."""
    raw = name.encode("utf-8")
    return group.id.links.get_info(raw).type if group.id.links.exists(raw) else None


def _hard_link_dataset(f, path, tensor_path):
    """The dataset at `tensor_path`, every link on the way checked to be a hard link."""
    node, parts = f, tensor_path.strip("/").split("/")
    for depth, name in enumerate(parts):
        at = "/" + "/".join(parts[:depth + 1])
        link = _link_type(node, name) if isinstance(node, h5py.Group) else None
        if link is None:
            raise TesseraFileError(path, f"{tensor_path}: listed in the manifest but missing from the file")
        if link != h5py.h5l.TYPE_HARD:
            raise TesseraFileError(path, f"{at}: is a soft or external link; tessera files hold only hard links")
        node = node[name]
    if not isinstance(node, h5py.Dataset):
        raise TesseraFileError(path, f"{tensor_path}: is not a dataset")
    return node


def _check_storage(d, path, at, nbytes, compact=True):
    """Raises unless the `nbytes` of dataset `d` are stored contiguous (or, up to 64 KiB, compact), unfiltered, in
    the file `path` itself: a small crafted file declaring a huge dataset must not make its reader allocate it."""
    plist = d.id.get_create_plist()
    layout = plist.get_layout()
    layouts = (h5py.h5d.CONTIGUOUS, h5py.h5d.COMPACT) if compact else (h5py.h5d.CONTIGUOUS,)
    if layout not in layouts or plist.get_nfilters() > 0:
        raise TesseraFileError(path, f"{at}: is chunked or compressed; tessera files store tensors contiguous and "
                                     "uncompressed")
    if plist.get_external_count() > 0:
        raise TesseraFileError(path, f"{at}: keeps its data in external files; tessera files hold their own data")
    if nbytes and d.id.get_storage_size() != nbytes:
        raise TesseraFileError(path, f"{at}: declares {nbytes} bytes but stores {d.id.get_storage_size()}")
    if not nbytes:
        return
    if layout == h5py.h5d.COMPACT:  # inside the object header, which HDF5 has already read
        if nbytes > MAX_COMPACT_BYTES:
            raise TesseraFileError(path, f"{at}: declares {nbytes} bytes stored compact (at most {MAX_COMPACT_BYTES})")
        return
    offset, size = d.id.get_offset(), os.path.getsize(path)
    if offset is None:
        raise TesseraFileError(path, f"{at}: has no data in the file")
    if offset + nbytes > size:
        raise TesseraFileError(path, f"{at}: its {nbytes} bytes at offset {offset} lie beyond the end of the file "
                                     f"({size} bytes): truncated or crafted")


def read_tensor(f, path, t):
    """Tensor `t` of the manifest as a C-ordered numpy array, checked before and after reading."""
    at = t["path"]
    d = _hard_link_dataset(f, path, at)
    if tuple(d.shape) != t["shape"]:
        raise TesseraFileError(path, f"{at}: the dataset has shape {list(d.shape)} but the manifest says "
                                     f"{list(t['shape'])}")
    if d.dtype.kind != DTYPES[t["dtype"]].kind or d.dtype.itemsize != DTYPES[t["dtype"]].itemsize:
        raise TesseraFileError(path, f"{at}: the dataset is {d.dtype} but the manifest says {t['dtype']}")
    _check_storage(d, path, at, t["bytes"])
    attr = _u32_attr(d, path, at)
    if attr is None:
        raise TesseraFileError(path, f"{at}: the crc32 attribute is missing")
    data = np.ascontiguousarray(d[()], dtype=DTYPES[t["dtype"]])
    crc = zlib.crc32(data.tobytes())
    if crc != t["crc32"] or crc != attr:
        raise TesseraFileError(path, f"{at}: CRC-32 mismatch (manifest 0x{t['crc32']:08x}, attribute "
                                     f"0x{attr:08x}, computed 0x{crc:08x}): the data is corrupt")
    return data


def read_model_file(path):
    """(meta, OrderedDict of tessera name -> numpy array) of the /model tensors of `path`."""
    try:
        with open_hdf5(path) as f:
            meta = read_meta(f, path)
            entries = read_manifest(f, path, meta["format"])
            tensors = OrderedDict((t["path"][len("/model/"):], read_tensor(f, path, t)) for t in entries)
    except TesseraFileError:
        raise
    except (OSError, KeyError, TypeError, ValueError) as e:  # from h5py or the OS: a damaged or unusual file
        raise TesseraFileError(path, f"cannot be read (damaged, or not as tessera writes it): "
                                     f"{type(e).__name__}: {e}") from None
    for name, a in tensors.items():
        # An int8 file (a quantised version) holds its weights in int8 and their scales in float32.
        if a.dtype.name != meta["dtype"] and not (meta["dtype"] == "int8" and a.dtype.name == "float32"):
            raise TesseraFileError(path, f"root attribute 'dtype' is {meta['dtype'][:100]} but /model/{name} is "
                                         f"{a.dtype.name}")
    return meta, tensors
