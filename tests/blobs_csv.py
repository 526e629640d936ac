#!/usr/bin/python3
"""Gaussian blobs as CSV for the end-to-end tests: DIR/train.csv and DIR/test.csv, a header of
x0..x{D-1},label and one example per line; class c's centre is OFFSET in every coordinate k with
k % CLASSES == c. The same arguments give the same files (seed 1).

  blobs_csv.py DIR [--dims 4] [--classes 3] [--train 480] [--test 240] [--offset 2.0]
"""
import argparse
import random

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("dir")
p.add_argument("--dims", type=int, default=4)
p.add_argument("--classes", type=int, default=3)
p.add_argument("--train", type=int, default=480)
p.add_argument("--test", type=int, default=240)
p.add_argument("--offset", type=float, default=2.0)
a = p.parse_args()
random.seed(1)
for name, n in (("train.csv", a.train), ("test.csv", a.test)):
    with open(f"{a.dir}/{name}", "w") as f:
        f.write(",".join(f"x{k}" for k in range(a.dims)) + ",label\n")
        for _ in range(n):
            c = random.randrange(a.classes)
            v = [(a.offset if k % a.classes == c else 0.0) + random.gauss(0, 0.5) for k in range(a.dims)]
            f.write(",".join(f"{x:.6f}" for x in v) + f",{c}\n")
