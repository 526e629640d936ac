#!/usr/bin/python3
"""The first N training and M test examples of Fashion-MNIST as raw (uncompressed) IDX files, for
end-to-end tests that train a small CNN in seconds: DIR/{train,test}-{images,labels}.idx.

  fmnist_subset.py DIR [--train 600] [--test 200] [--data /usr/share/datasets/fashion-mnist]
"""
import argparse
import gzip
import struct

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("dir")
p.add_argument("--train", type=int, default=600)
p.add_argument("--test", type=int, default=200)
p.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
a = p.parse_args()


def subset(src, dst, n):
    """Copies the header of IDX file `src` with its first dimension set to n, and n examples."""
    with gzip.open(src) as f:
        magic, count = struct.unpack(">II", f.read(8))
        dims = struct.unpack(f">{(magic & 0xFF) - 1}I", f.read(4 * ((magic & 0xFF) - 1)))
        if n > count:
            raise SystemExit(f"{src}: holds {count} examples, fewer than the {n} asked for")
        size = 1
        for d in dims:
            size *= d
        body = f.read(n * size)
    with open(dst, "wb") as out:
        out.write(struct.pack(">II", magic, n) + struct.pack(f">{len(dims)}I", *dims) + body)


for split, prefix, n in (("train", "train", a.train), ("test", "t10k", a.test)):
    subset(f"{a.data}/{prefix}-images-idx3-ubyte.gz", f"{a.dir}/{split}-images.idx", n)
    subset(f"{a.data}/{prefix}-labels-idx1-ubyte.gz", f"{a.dir}/{split}-labels.idx", n)
