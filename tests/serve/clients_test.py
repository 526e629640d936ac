"""tessera serve against real clients: tritonclient (HTTP and gRPC) and curl, unchanged.

Run by serve_cli_test.sh with: TESSERA WORK (WORK/store holds w1 version 1, aliased production,
published by a real training run in WORK/run)."""
import gzip, json, os, shutil, signal, subprocess, sys, threading, time, unittest, urllib.request

import warnings

import numpy as np
import tritonclient.grpc as tg
import tritonclient.http as th
from tritonclient.utils import InferenceServerException

TESSERA, WORK = sys.argv[1], sys.argv[2]
STORE = os.path.join(WORK, "store")
DATA = "/usr/share/datasets/fashion-mnist"


def images(n=None):
    with gzip.open(f"{DATA}/t10k-images-idx3-ubyte.gz") as f:
        x = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 1, 28, 28)
    with gzip.open(f"{DATA}/t10k-labels-idx1-ubyte.gz") as f:
        y = np.frombuffer(f.read(), np.uint8, offset=8)
    return (x, y) if n is None else (x[:n], y[:n])


class Server:
    """`tessera serve` on free loopback ports, stopped with SIGTERM."""

    def __init__(self, *args):
        self.dir = os.path.join(WORK, f"srv{time.monotonic_ns()}")
        os.makedirs(self.dir)
        self.port_file = os.path.join(self.dir, "ports.json")
        self.log = open(os.path.join(self.dir, "serve.log"), "w")
        self.proc = subprocess.Popen([TESSERA, "serve", "--store", STORE, "--http-port", "0", "--grpc-port", "0",
                                      "--port-file", self.port_file, "--poll-interval", "0.2", *args],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        for _ in range(200):
            if os.path.exists(self.port_file):
                break
            assert self.proc.poll() is None, self.logtext()
            time.sleep(0.05)
        ports = json.load(open(self.port_file))
        self.http, self.grpc = f"localhost:{ports['http']}", f"localhost:{ports['grpc']}"
        self.url = f"http://{self.http}"

    def logtext(self):
        self.log.flush()
        return open(self.log.name, errors="replace").read()

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)

    def metrics(self):
        return urllib.request.urlopen(self.url + "/metrics").read().decode()

    def metric(self, name):
        for line in self.metrics().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        return None


def curl(url, *args):
    """(status, body) of curl."""
    out = subprocess.run(["curl", "-s", "-o", "-", "-w", "\n%{http_code}", *args, url], capture_output=True, check=True)
    body, _, code = out.stdout.rpartition(b"\n")
    return int(code), body


def http_infer(client, x, model="w1", version="", binary=True, outputs=("logits",)):
    i = th.InferInput("input", list(x.shape), "UINT8")
    i.set_data_from_numpy(x, binary_data=binary)
    outs = [th.InferRequestedOutput(o, binary_data=binary) for o in outputs]
    return client.infer(model, [i], model_version=version, outputs=outs)


def publish(alias="production"):
    out = subprocess.run([TESSERA, "store", "publish", os.path.join(WORK, "run"), "--store", STORE, "--model", "w1",
                          "--alias", alias, "--json"], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)["version"]


def set_alias(version, alias="production"):
    subprocess.run([TESSERA, "store", "alias", f"w1@{version}", alias, "--store", STORE], check=True,
                   capture_output=True)


def corrupt_copy(src_version):
    """The next version number holding a copy of src_version with one byte of weights changed."""
    versions = sorted(int(v) for v in os.listdir(os.path.join(STORE, "w1")) if v.isdigit())
    dst = os.path.join(STORE, "w1", str(versions[-1] + 1))
    shutil.copytree(os.path.join(STORE, "w1", str(src_version)), dst)
    w = os.path.join(dst, "weights.h5")
    os.chmod(w, 0o644)
    with open(w, "r+b") as f:
        f.seek(-5, os.SEEK_END)
        b = f.read(1)
        f.seek(-5, os.SEEK_END)
        f.write(bytes([b[0] ^ 0xFF]))
    return versions[-1] + 1


class Clients(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = Server("--model", "w1@production")
        cls.h = th.InferenceServerClient(cls.server.http, concurrency=4)
        cls.g = tg.InferenceServerClient(cls.server.grpc)

    @classmethod
    def tearDownClass(cls):
        assert cls.server.stop() == 0, cls.server.logtext()

    def test_health_and_metadata_through_both_clients(self):
        self.assertTrue(self.h.is_server_live() and self.h.is_server_ready())
        self.assertTrue(self.g.is_server_live() and self.g.is_server_ready())
        self.assertTrue(self.h.is_model_ready("w1") and self.g.is_model_ready("w1"))
        self.assertFalse(self.h.is_model_ready("nope") or self.g.is_model_ready("nope"))
        md = self.h.get_model_metadata("w1")
        self.assertEqual(md["inputs"], [{"name": "input", "datatype": "UINT8", "shape": [-1, 1, 28, 28]}])
        self.assertIn({"name": "logits", "datatype": "FP32", "shape": [-1, 10]}, md["outputs"])
        gm = self.g.get_model_metadata("w1")
        self.assertEqual(list(gm.inputs[0].shape), [-1, 1, 28, 28])
        self.assertEqual(self.h.get_server_metadata()["name"], "tessera")
        self.assertIn("binary_tensor_data", self.g.get_server_metadata().extensions)
        index = self.h.get_model_repository_index()
        self.assertTrue(any(m["name"] == "w1" and m["state"] == "READY" for m in index))

    def test_json_binary_and_grpc_answer_the_same(self):
        x, _ = images(8)
        a = http_infer(self.h, x, binary=True).as_numpy("logits")
        b = http_infer(self.h, x, binary=False).as_numpy("logits")
        gi = tg.InferInput("input", list(x.shape), "UINT8")
        gi.set_data_from_numpy(x)
        c = self.g.infer("w1", [gi], outputs=[tg.InferRequestedOutput("logits")]).as_numpy("logits")
        self.assertEqual(a.shape, (8, 10))
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
        # FP32 pixels in 0..255 are the same input as UINT8.
        f = th.InferInput("input", list(x.shape), "FP32")
        f.set_data_from_numpy(x.astype(np.float32))
        np.testing.assert_array_equal(self.h.infer("w1", [f]).as_numpy("logits"), a)
        # Top-k and Triton's classification extension.
        r = http_infer(self.h, x, outputs=("classes",))
        np.testing.assert_array_equal(r.as_numpy("classes")[:, 0], a.argmax(1))
        cls = self.h.infer("w1", [gi_http(x)], outputs=[th.InferRequestedOutput("probabilities", class_count=3)])
        top = cls.as_numpy("probabilities")
        self.assertEqual(top.shape, (8, 3))
        self.assertEqual([int(s.split(b":")[1]) for s in top[:, 0]], list(a.argmax(1)))

    def test_served_accuracy_is_the_trainers(self):
        x, y = images()
        summary = json.load(open(os.path.join(WORK, "run", "summary.json")))
        want = summary["test_accuracy"]
        correct = 0
        for b in range(0, len(x), 64):
            logits = http_infer(self.h, x[b:b + 64]).as_numpy("logits")
            correct += int((logits.argmax(1) == y[b:b + 64]).sum())
        self.assertAlmostEqual(correct / len(x), want, places=12)

    def test_errors_through_the_clients(self):
        x, _ = images(1)
        with self.assertRaises(InferenceServerException) as e:
            http_infer(self.h, x, model="nope")
        self.assertEqual(e.exception.status(), "404")
        with self.assertRaises(InferenceServerException) as e:
            http_infer(self.h, x, version="999")
        self.assertEqual(e.exception.status(), "404")
        with self.assertRaises(InferenceServerException) as e:
            http_infer(self.h, x.reshape(1, 28, 28))
        self.assertEqual(e.exception.status(), "400")
        self.assertIn("does not fit the model", e.exception.message())
        gi = tg.InferInput("input", [1, 1, 28], "UINT8")
        gi.set_data_from_numpy(np.zeros((1, 1, 28), np.uint8))
        with self.assertRaises(InferenceServerException) as e:
            self.g.infer("w1", [gi])
        self.assertEqual(e.exception.status(), "StatusCode.INVALID_ARGUMENT")

    def test_bad_inputs_get_4xx_while_a_good_client_sees_no_failure(self):
        x, _ = images(1)
        failures, done = [], threading.Event()

        def good():
            c = th.InferenceServerClient(self.server.http)
            while not done.is_set():
                try:
                    http_infer(c, x)
                except Exception as e:  # noqa: BLE001 - any failure of the good client fails the test
                    failures.append(repr(e))

        t = threading.Thread(target=good, daemon=True)
        t.start()
        try:
            self.check_bad_inputs(x)
        finally:
            done.set()
            t.join()
        self.assertEqual(failures, [])
        self.assertGreater(self.server.metric('tessera_serve_request_failures_total{model="w1",version="",'
                                              'protocol="http",status="400"}') or 0, 0)

    def check_bad_inputs(self, x):
        url = self.server.url
        good_json = json.dumps({"inputs": [{"name": "input", "shape": [1, 784], "datatype": "UINT8",
                                            "data": [0] * 784}]})
        cases = [
            ("/v2/models/w1/infer", ["-d", "{not json"], 400, "not valid JSON"),
            ("/v2/models/w1/infer", ["-d", json.dumps({"inputs": [{"name": "input", "shape": [1, 783],
                                                               "datatype": "UINT8", "data": [0] * 783}]})], 400,
             "does not fit"),
            ("/v2/models/w1/infer", ["-d", good_json.replace("UINT8", "INT64")], 400, "is not accepted"),
            ("/v2/models/w1/infer", ["-d", good_json.replace('"data": [0', '"data": [300')], 400, "UINT8"),
            ("/v2/models/w1/infer", ["-d", "@" + self.file("deep.json", "[" * 200000)], 400, "nested deeper"),
            ("/v2/models/w1/infer", ["-d", "@" + self.big_body()], 413, "--max-body-bytes"),
            ("/v2/models/nope/infer", ["-d", good_json], 404, "unknown model"),
            ("/v2/models/w1/versions/77/infer", ["-d", good_json], 404, "no version '77'"),
            ("/v2/models/%2e%2e/infer", ["-d", good_json], 400, "model"),
            ("/v2/models/..%2f..%2fetc/infer", ["-d", good_json], 404, "no such endpoint"),
            ("/v2/models/%2Fetc%2Fpasswd/infer", ["-d", good_json], 404, "no such endpoint"),
            ("/v2/models/w1/versions/..%2e/infer", ["-d", good_json], 400, "version"),
        ]
        for path, args, status, part in cases:
            code, body = curl(url + path, "-H", "Content-Type: application/json", *args)
            self.assertEqual(code, status, f"{path} {args[-1][:40]}: {body[:200]}")
            self.assertIn(part, json.loads(body)["error"], path)
        code, _ = curl(url + "/v2/models/w1/infer", "-d", good_json)
        self.assertEqual(code, 200)

    def file(self, name, text):
        path = os.path.join(WORK, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def big_body(self):
        path = os.path.join(WORK, "big.json")
        if not os.path.exists(path):
            with open(path, "w") as f:
                f.write('{"inputs": [{"name": "input", "shape": [1], "datatype": "FP32", "data": [' +
                        "0," * (9 << 20) + "0]}]}")
        return path


def gi_http(x):
    i = th.InferInput("input", list(x.shape), "UINT8")
    i.set_data_from_numpy(x)
    return i


class Swaps(unittest.TestCase):
    def test_hot_swaps_under_load_drop_nothing_and_memory_comes_back(self):
        server = Server("--model", "w1@production")
        try:
            x, _ = images(1)
            c = th.InferenceServerClient(server.http)
            # The baseline is taken after the same 16-client load has run once without swaps: the
            # server's connection threads and their malloc arenas are then part of it.
            warm = [threading.Thread(target=lambda: [http_infer(th.InferenceServerClient(server.http), x)
                                                     for _ in range(30)]) for _ in range(16)]
            for t in warm:
                t.start()
            for t in warm:
                t.join()
            baseline = server.metric("process_resident_memory_bytes")
            published = {int(http_infer(c, x).get_response()["model_version"])}
            answers, failures, lock, swapped = [], [], threading.Lock(), threading.Event()

            def client():  # until the swaps are done, and at most 3000 requests
                cc = th.InferenceServerClient(server.http)
                for _ in range(3000):
                    if swapped.is_set():
                        return
                    try:
                        r = http_infer(cc, x)
                        with lock:
                            answers.append(int(r.get_response()["model_version"]))
                    except Exception as e:  # noqa: BLE001
                        with lock:
                            failures.append(repr(e))

            threads = [threading.Thread(target=client, daemon=True) for _ in range(16)]
            for t in threads:
                t.start()
            for _ in range(3):  # a new version, then the alias flipped back and forth
                v = publish()
                published.add(v)
                time.sleep(0.5)
                set_alias(min(published))
                time.sleep(0.5)
                set_alias(v)
                time.sleep(0.5)
            swapped.set()
            for t in threads:
                t.join(timeout=120)
            self.assertEqual(failures, [])
            self.assertGreater(len(answers), 16 * 10)
            self.assertTrue(set(answers) <= published, (set(answers), published))
            self.assertGreater(len(set(answers)), 1, "the swaps happened while the clients ran")
            self.assertGreaterEqual(server.metric('tessera_serve_swaps_total{model="w1"}'), 4)
            time.sleep(1)
            for _ in range(50):
                http_infer(c, x)
            final = server.metric("process_resident_memory_bytes")
            self.assertLess(final, baseline * 1.10, f"RSS {final} vs baseline {baseline}")
        finally:
            self.assertEqual(server.stop(), 0, server.logtext())

    def test_a_corrupt_version_is_never_served(self):
        server = Server("--model", "w1")  # latest
        try:
            c = th.InferenceServerClient(server.http)
            x, _ = images(1)
            good = int(http_infer(c, x).get_response()["model_version"])
            bad = corrupt_copy(good)
            deadline = time.time() + 20
            while not server.metric(f'tessera_serve_load_failures_total{{model="w1",version="{bad}"}}'):
                self.assertLess(time.time(), deadline, server.logtext())
                time.sleep(0.1)
            for _ in range(20):
                self.assertEqual(int(http_infer(c, x).get_response()["model_version"]), good)
            with self.assertRaises(InferenceServerException):
                http_infer(c, x, version=str(bad))
            index = c.get_model_repository_index()
            self.assertIn({"name": "w1", "version": str(bad), "state": "UNAVAILABLE"},
                          [{k: m[k] for k in ("name", "version", "state")} for m in index])
            self.assertIn(f"NOT serving w1 version {bad}", server.logtext())
        finally:
            self.assertEqual(server.stop(), 0, server.logtext())
            shutil.rmtree(os.path.join(STORE, "w1", str(bad)), ignore_errors=True)


class Operations(unittest.TestCase):
    def test_bearer_token(self):
        token = os.path.join(WORK, "token")
        with open(token, "w") as f:
            f.write("s3cret\n")
        server = Server("--auth-token-file", token)
        try:
            self.assertEqual(curl(server.url + "/v2/health/ready")[0], 200)
            self.assertEqual(curl(server.url + "/metrics")[0], 200)
            code, body = curl(server.url + "/v2/models/w1")
            self.assertEqual(code, 401)
            self.assertIn("Bearer", json.loads(body)["error"])
            self.assertEqual(curl(server.url + "/v2/models/w1", "-H", "Authorization: Bearer wrong")[0], 401)
            self.assertEqual(curl(server.url + "/v2/models/w1", "-H", "Authorization: Bearer s3cret")[0], 200)
            g = tg.InferenceServerClient(server.grpc)
            with self.assertRaises(InferenceServerException):
                g.get_model_metadata("w1")
            self.assertEqual(g.get_model_metadata("w1", headers={"authorization": "Bearer s3cret"}).name, "w1")
        finally:
            self.assertEqual(server.stop(), 0)

    def test_sigterm_drains_and_exits_zero(self):
        server = Server("--max-queue-delay-us", "2000")
        x, _ = images(4)
        statuses, lock, stop = [], threading.Lock(), threading.Event()

        def client():
            c = th.InferenceServerClient(server.http)
            while not stop.is_set():
                try:
                    http_infer(c, x)
                    with lock:
                        statuses.append(200)
                except InferenceServerException as e:
                    with lock:
                        statuses.append(e.status())
                except Exception:  # noqa: BLE001 - refused connections once the server stops listening
                    return

        threads = [threading.Thread(target=client, daemon=True) for _ in range(8)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        self.assertEqual(server.stop(), 0, server.logtext())
        stop.set()
        for t in threads:
            t.join(timeout=30)
        self.assertGreater(len(statuses), 0)
        self.assertEqual([s for s in statuses if s != 200 and s is not None], [], "a request in flight failed")
        self.assertIn("draining", server.logtext())


if __name__ == "__main__":
    warnings.simplefilter("ignore", ResourceWarning)
    unittest.main(argv=[sys.argv[0], "-v"])
