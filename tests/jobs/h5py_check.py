#!/usr/bin/python3
"""Checks a tessera checkpoint with h5py and numpy only (no tessera code), as a user would.

  h5py_check.py CHECKPOINT EXPECTED.json
      EXPECTED.json is either the output of `tessera ckpt inspect --json` (its "tensors" list:
      then every /model and /optim dataset in the file must be listed, and the step must match)
      or a JSON object {"/model/1.weight": [16, 4], ...} naming tensors that must be there.
      Checks that each expected tensor exists at its logical shape as float32, that
      zlib.crc32 of its bytes equals its `crc32` attribute and its /manifest entry, and that the
      root attributes step, format and format_version exist. Exits 1 listing every problem.

  h5py_check.py --flip-each CHECKPOINT OUT_DIR
      For every tensor dataset (/model/..., /optim/...), writes a copy of CHECKPOINT to OUT_DIR
      with one byte flipped in the middle of that tensor's data (its offset from
      ds.id.get_offset()), checks that the copy's data now fails the CRC, and prints
      "TENSOR_PATH<TAB>COPY" per copy.

Runs on Debian's /usr/bin/python3 (python3-h5py, python3-numpy).
"""
import json
import os
import shutil
import sys
import zlib

import h5py
import numpy as np


def tensor_datasets(f):
    """Paths of every dataset under /model and /optim, in file order."""
    out = []

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset) and (name.startswith("model/") or name.startswith("optim/")):
            out.append("/" + name)

    f.visititems(visit)
    return out


def read_manifest(f, problems):
    if "manifest" not in f:
        problems.append("/manifest is missing")
        return {}
    raw = f["manifest"][()]
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8")
    try:
        m = json.loads(raw)
        return {t["path"]: t for t in m["tensors"]}
    except (ValueError, KeyError, TypeError) as e:
        problems.append("/manifest is not valid JSON with a tensors list: %s" % e)
        return {}


def load_expected(path):
    with open(path) as fh:
        j = json.load(fh)
    if isinstance(j, dict) and isinstance(j.get("tensors"), list):  # tessera ckpt inspect --json
        return {t["path"]: list(t["shape"]) for t in j["tensors"]}, j, True
    if isinstance(j, dict) and all(isinstance(v, list) for v in j.values()):
        return {k: list(v) for k, v in j.items()}, None, False
    sys.exit("h5py_check: %s: expected `tessera ckpt inspect --json` output or {path: shape}" % path)


def check(ckpt, expected_path):
    expected, inspect, complete = load_expected(expected_path)
    if not expected:
        sys.exit("h5py_check: %s lists no tensors" % expected_path)
    problems = []
    with h5py.File(ckpt, "r") as f:
        for attr in ("step", "format", "format_version"):
            if attr not in f.attrs:
                problems.append("root attribute '%s' is missing" % attr)
        if "format" in f.attrs:
            fmt = f.attrs["format"]
            fmt = fmt.decode() if isinstance(fmt, bytes) else str(fmt)
            if fmt not in ("tessera.checkpoint", "tessera.model"):
                problems.append("root attribute format is %r" % fmt)
        if "format_version" in f.attrs and int(f.attrs["format_version"]) < 1:
            problems.append("root attribute format_version is %r" % f.attrs["format_version"])
        if inspect is not None and "step" in f.attrs and int(f.attrs["step"]) != inspect["step"]:
            problems.append("step attribute %d but tessera ckpt inspect says %d" % (int(f.attrs["step"]), inspect["step"]))
        manifest = read_manifest(f, problems)
        present = tensor_datasets(f)
        if complete:
            for p in present:
                if p not in expected:
                    problems.append("%s: in the file but not in the expected list" % p)
        for path, shape in expected.items():
            if path not in f or not isinstance(f[path], h5py.Dataset):
                problems.append("%s: missing" % path)
                continue
            ds = f[path]
            if list(ds.shape) != shape:
                problems.append("%s: shape %s, expected %s" % (path, list(ds.shape), shape))
            if ds.dtype != np.dtype("<f4"):
                problems.append("%s: dtype %s, expected float32" % (path, ds.dtype))
            data = ds[()]
            crc = zlib.crc32(np.ascontiguousarray(data).tobytes()) & 0xFFFFFFFF
            if "crc32" not in ds.attrs:
                problems.append("%s: no crc32 attribute" % path)
            elif int(ds.attrs["crc32"]) != crc:
                problems.append("%s: zlib.crc32 of the data is 0x%08x but the crc32 attribute is 0x%08x"
                                % (path, crc, int(ds.attrs["crc32"])))
            entry = manifest.get(path)
            if entry is None:
                problems.append("%s: not in /manifest" % path)
            else:
                if int(entry["crc32"]) != crc:
                    problems.append("%s: zlib.crc32 of the data is 0x%08x but /manifest says 0x%08x"
                                    % (path, crc, int(entry["crc32"])))
                if list(entry["shape"]) != list(ds.shape):
                    problems.append("%s: /manifest shape %s, dataset %s" % (path, entry["shape"], list(ds.shape)))
                if int(entry["bytes"]) != data.nbytes:
                    problems.append("%s: /manifest bytes %s, data %d" % (path, entry["bytes"], data.nbytes))
    if problems:
        for p in problems:
            print("h5py_check: %s: %s" % (ckpt, p), file=sys.stderr)
        print("h5py_check: %s: FAILED (%d problem%s)" % (ckpt, len(problems), "" if len(problems) == 1 else "s"),
              file=sys.stderr)
        return 1
    print("h5py_check: %s: OK (%d tensors, every CRC-32 matches)" % (ckpt, len(expected)))
    return 0


def flip_each(ckpt, out_dir):
    os.makedirs(out_dir, exist_ok=True)
    with h5py.File(ckpt, "r") as f:
        targets = []
        for path in tensor_datasets(f):
            ds = f[path]
            offset = ds.id.get_offset()
            if offset is None or ds.nbytes == 0:
                sys.exit("h5py_check: %s: %s has no contiguous data to corrupt" % (ckpt, path))
            targets.append((path, offset + ds.nbytes // 2, int(ds.attrs["crc32"])))
    if not targets:
        sys.exit("h5py_check: %s: no tensor datasets" % ckpt)
    for i, (path, at, crc) in enumerate(targets):
        copy = os.path.join(out_dir, "flip-%02d.h5" % i)
        shutil.copyfile(ckpt, copy)
        with open(copy, "r+b") as fh:
            fh.seek(at)
            b = fh.read(1)
            fh.seek(at)
            fh.write(bytes([b[0] ^ 0x10]))
        with h5py.File(copy, "r") as f:  # the flip landed in that tensor's data
            got = zlib.crc32(f[path][()].tobytes()) & 0xFFFFFFFF
        if got == crc:
            sys.exit("h5py_check: %s: flipping byte %d did not change %s" % (copy, at, path))
        print("%s\t%s" % (path, copy))
    return 0


def main(argv):
    if len(argv) == 4 and argv[1] == "--flip-each":
        return flip_each(argv[2], argv[3])
    if len(argv) == 3:
        return check(argv[1], argv[2])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
