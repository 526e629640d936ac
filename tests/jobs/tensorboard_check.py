"""Checks a run's TensorBoard event file against its metrics.jsonl (see tensorboard_cli_test.sh).

    tensorboard_check.py files RUN_DIR         framing, TensorBoard's loader, values
    tensorboard_check.py server RUN_DIR URL    a running `tensorboard --logdir` serves the run
    tensorboard_check.py resumed RUN_DIR STEP  a resumed run's restart record and TensorBoard's view
"""
import glob
import json
import os
import struct
import sys
import time
import urllib.parse
import urllib.request


def crc32c(data):
    """CRC-32C, bit by bit: independent of tessera's table-driven one."""
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    return crc ^ 0xFFFFFFFF


def masked(c):
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def check_framing(path):
    data = open(path, "rb").read()
    at, records = 0, 0
    while at < len(data):
        (n,) = struct.unpack_from("<Q", data, at)
        (hcrc,) = struct.unpack_from("<I", data, at + 8)
        assert hcrc == masked(crc32c(data[at:at + 8])), f"{path}: header CRC of record {records} at byte {at}"
        payload = data[at + 12:at + 12 + n]
        (dcrc,) = struct.unpack_from("<I", data, at + 12 + n)
        assert dcrc == masked(crc32c(payload)), f"{path}: data CRC of record {records}"
        at += 16 + n
        records += 1
    assert at == len(data), f"{path}: {len(data) - at} trailing bytes"
    return records


def expected(run):
    """tag -> {step: value} from metrics.jsonl, as tessera's RunLog maps them."""
    want = {}
    for line in open(os.path.join(run, "metrics.jsonl")):
        e = json.loads(line)
        if e["event"] not in ("train", "eval"):
            continue
        for k, v in e.items():
            if k in ("event", "step"):
                continue
            if isinstance(v, (int, float)):
                want.setdefault(f"{e['event']}/{k}", {})[e["step"]] = float(v)
            elif isinstance(v, list):
                for i, x in enumerate(v):
                    want.setdefault(f"{e['event']}/{k}/{i}", {})[e["step"]] = float(x)
    return want


def close(a, b):
    return abs(a - b) <= 1e-6 * max(1.0, abs(b))  # simple_value is a float32


def files(run):
    paths = glob.glob(os.path.join(run, "events.out.tfevents.*"))
    assert len(paths) == 1, paths
    records = check_framing(paths[0])
    from tensorboard.backend.event_processing import event_accumulator
    acc = event_accumulator.EventAccumulator(run, size_guidance={event_accumulator.SCALARS: 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    want = expected(run)
    for tag in ("train/loss", "train/lr", "train/samples_per_sec", "train/grad_norm", "train/rank_step_seconds/0",
                "train/rank_step_seconds/1", "eval/test_accuracy", "eval/test_loss"):
        assert tag in tags, f"{tag} missing from {sorted(tags)}"
    assert tags == set(want), (sorted(tags ^ set(want)))
    for tag, by_step in want.items():
        got = {s.step: s.value for s in acc.Scalars(tag)}
        assert set(got) == set(by_step), (tag, sorted(got), sorted(by_step))
        for step, v in by_step.items():
            assert close(got[step], v), (tag, step, got[step], v)
    loss = [s.value for s in acc.Scalars("train/loss")]
    assert loss[-1] < loss[0], f"loss did not fall: {loss}"
    assert all(s.value > 0 for s in acc.Scalars("train/rank_step_seconds/1"))
    print(f"{paths[0]}: {records} records, framing and CRCs correct; TensorBoard reads {len(tags)} scalar tags, "
          f"every value as in metrics.jsonl (loss {loss[0]:.4f} -> {loss[-1]:.4f})")


def resumed(run, first_step):
    """A run that stopped after logging past its last checkpoint and was resumed from it: the new
    file starts with a SessionLog START at the resumed step + 1, and TensorBoard shows every step
    once (the stopped run's points from there on are dropped), with the resumed run's values."""
    paths = sorted(glob.glob(os.path.join(run, "events.out.tfevents.*")))
    assert len(paths) == 2, paths
    for p in paths:
        check_framing(p)
    from tensorboard.compat.proto import event_pb2
    from tensorboard.backend.event_processing import event_accumulator
    data = open(paths[1], "rb").read()
    n0 = struct.unpack_from("<Q", data, 0)[0]
    at = 16 + n0  # past the file-version record
    n1 = struct.unpack_from("<Q", data, at)[0]
    e = event_pb2.Event.FromString(data[at + 12:at + 12 + n1])
    assert e.HasField("session_log") and e.session_log.status == event_pb2.SessionLog.START, e
    assert e.step == first_step, (e.step, first_step)
    acc = event_accumulator.EventAccumulator(run, size_guidance={event_accumulator.SCALARS: 0})
    acc.Reload()
    want = expected(run)  # later lines win: the resumed run's values
    for tag in ("train/loss", "train/samples_per_sec"):
        points = acc.Scalars(tag)
        steps = [p.step for p in points]
        assert steps == sorted(set(steps)) == sorted(want[tag]), (tag, steps, sorted(want[tag]))
        for p in points:
            assert close(p.value, want[tag][p.step]), (tag, p.step, p.value, want[tag][p.step])
    print(f"resumed run: restart record at step {first_step}; TensorBoard shows each of "
          f"{len(want['train/loss'])} steps once, with the resumed run's values")


def server(run, url):
    name = os.path.basename(run)
    want = expected(run)["train/loss"]
    deadline = time.time() + 90
    last = None
    while time.time() < deadline:
        try:
            q = urllib.parse.urlencode({"run": name, "tag": "train/loss"})
            with urllib.request.urlopen(f"{url}/data/plugin/scalars/scalars?{q}", timeout=5) as r:
                points = json.load(r)  # [[wall_time, step, value], ...]
            if len(points) == len(want):
                for _, step, value in points:
                    assert close(value, want[step]), (step, value, want[step])
                print(f"tensorboard --logdir serves run '{name}': train/loss at {len(points)} steps")
                return
            last = f"{len(points)} of {len(want)} points"
        except Exception as e:  # not up yet, or still loading
            last = repr(e)
        time.sleep(1)
    raise SystemExit(f"tensorboard did not serve {name}'s train/loss within 90 s: {last}")


if __name__ == "__main__":
    {"files": lambda: files(sys.argv[2]), "server": lambda: server(sys.argv[2], sys.argv[3]),
     "resumed": lambda: resumed(sys.argv[2], int(sys.argv[3]))}[sys.argv[1]]()
