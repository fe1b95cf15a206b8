"""The ONNX reader's vectorized open (readers/_onnx_fast.py) against its field-by-field walk.

The walk (`onnx_files.FAST = False`) is the reference the earlier tests check against onnx itself;
the fast path must give the same names, shapes, dtypes, bytes, meta, layers and file meta on real
and generated files, the same outcome on mutated files, and must actually be taken where it
applies. Also: big files' headers are read without mapping the file (no resident file pages).
"""
from __future__ import annotations

import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from converters import read  # noqa: E402
from converters.errors import ConvertersError, FormatError  # noqa: E402
from converters.readers import _protowire as pw  # noqa: E402
from converters.readers import onnx_files  # noqa: E402

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "onnx"
FIXTURES = sorted(p.name for p in FIX.glob("*.onnx"))


def snapshot(path, **options) -> dict:
    """Everything a caller can see of an opened file, materialised."""
    with read(path, "onnx", **options) as f:
        arrays = {}
        for k, h in f.items():
            a = h.numpy()
            arrays[k] = (h.shape, str(h.dtype), a.tolist() if a.dtype == object else a.tobytes(), dict(h.meta))
        layers = {k: (v.type, repr(v.params), v.inputs, v.outputs, v.arrays) for k, v in f.layers.items()}
        return {"names": list(f), "arrays": arrays, "layers": layers, "meta": f.meta}


def both(path, monkeypatch, **options):
    monkeypatch.setattr(onnx_files, "FAST", True)
    fast = snapshot(path, **options)
    monkeypatch.setattr(onnx_files, "FAST", False)
    walked = snapshot(path, **options)
    monkeypatch.setattr(onnx_files, "FAST", True)
    return fast, walked


def took_fast_path(path, monkeypatch) -> bool:
    """True when open() did not need the field-by-field walk."""
    calls = []
    real = onnx_files._walk
    monkeypatch.setattr(onnx_files, "_walk", lambda *a, **k: calls.append(1) or real(*a, **k))
    read(path, "onnx").close()
    monkeypatch.setattr(onnx_files, "_walk", real)
    return not calls


@pytest.mark.parametrize("name", FIXTURES)
def test_fixtures_same_as_the_walk(name, monkeypatch):
    fast, walked = both(FIX / name, monkeypatch)
    assert fast == walked


def test_fast_path_is_taken_where_it_applies(monkeypatch):
    for name in ("ch_ppocr_mobile_v2.0_cls_infer.onnx", "small_cnn.onnx", "small_cnn_fp16.onnx",
                 "small_cnn_external.onnx"):
        assert took_fast_path(FIX / name, monkeypatch), name
    assert not took_fast_path(FIX / "typed_fields.onnx", monkeypatch)  # If subgraphs: the walk


def _many(tmp_path, n=300) -> Path:
    """Initializers of many dtypes and storages, Paddle-style Constants, ConstantOfShape, a Gemm."""
    rng = np.random.default_rng(1)
    inits, nodes = [], []
    kinds = [np.float32, np.float16, np.int64, np.int32, np.uint8, np.float64, np.bool_, np.int8]
    for i in range(n):
        dt = kinds[i % len(kinds)]
        shape = [(3, 4), (5,), (), (2, 0, 3), (1, 1, 1, 2)][i % 5]
        a = (rng.standard_normal(shape) * 10).astype(dt)
        t = numpy_helper.from_array(a, f"w{i}")
        if i % 7 == 3 and dt == np.float32:  # typed field instead of raw_data
            t = helper.make_tensor(f"w{i}", TensorProto.FLOAT, a.shape, a.ravel().tolist())
        if i % 11 == 5 and dt == np.int64:
            t = helper.make_tensor(f"w{i}", TensorProto.INT64, a.shape, a.ravel().tolist())
        if i % 2:
            nodes.append(helper.make_node("Constant", [], [f"c{i}"], name=f"const{i}", value=t))
        else:
            inits.append(t)
    nodes.append(helper.make_node("Gemm", ["x", "w0", "w2"], ["y"], name="fc", transB=1, alpha=0.5))
    nodes.append(helper.make_node("ConstantOfShape", ["s"], ["z"], name="fill",
                                  value=numpy_helper.from_array(np.array([1.5], np.float32), "v")))
    nodes.append(helper.make_node("Concat", ["y", "z"], ["out"], axis=-1))
    graph = helper.make_graph(nodes, "many", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], initializer=inits)
    path = tmp_path / "many.onnx"
    onnx.save(helper.make_model(graph, producer_name="test"), str(path))
    return path


def test_generated_file_same_as_the_walk_and_as_onnx(tmp_path, monkeypatch):
    path = _many(tmp_path)
    assert took_fast_path(path, monkeypatch)
    fast, walked = both(path, monkeypatch)
    assert fast == walked
    model = onnx.load(str(path))
    ref = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    ref.update({n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in model.graph.node
                if n.op_type == "Constant"})
    assert sorted(ref) == sorted(fast["names"])
    for k, a in ref.items():
        shape, dtype, data, _meta = fast["arrays"][k]
        assert shape == a.shape and dtype == str(a.dtype) and data == a.tobytes(), k


def test_pread_header_walk_same_as_the_map(tmp_path, monkeypatch):
    """Files past MAP_WALK_MAX are walked with pread: same result on both paths."""
    path = _many(tmp_path)
    mapped = snapshot(path)
    monkeypatch.setattr(onnx_files, "MAP_WALK_MAX", 0)
    fast, walked = both(path, monkeypatch)
    assert fast == walked == mapped
    for name in FIXTURES:
        assert both(FIX / name, monkeypatch)[0] == snapshot(FIX / name), name


def _mapped_rss_kb(path) -> int:
    """Resident KB of this process's mappings of `path` (/proc/self/smaps: exact, per mapping)."""
    total, current = 0, False
    with open("/proc/self/smaps") as fh:
        for line in fh:
            if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
                current = line.rstrip().endswith(str(path))
            elif current and line.startswith("Rss:"):
                total += int(line.split()[1])
    return total


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="needs Linux /proc")
def test_open_of_a_big_file_maps_no_pages(tmp_path):
    """Regression: walking the headers through the map made ~100 MB of a 1 GB model resident
    (large folios); read with pread, open leaves none of the file resident in this process."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((64, 1024), dtype=np.float32), f"w{i}") for i in range(48)]
    path = tmp_path / "big.onnx"
    onnx.save(helper.make_model(helper.make_graph([], "g", [], [], initializer=inits)), str(path))
    assert path.stat().st_size > onnx_files.MAP_WALK_MAX
    path.read_bytes()  # in the page cache, where fault-around would map it
    with read(path, "onnx") as f:
        assert _mapped_rss_kb(path.resolve()) == 0
        copies = [h.numpy() for h in f.values()]  # 12 MB copied; each array's pages released after
        assert len(copies) == 48 and _mapped_rss_kb(path.resolve()) < 4096  # (a folio or two may stay)
        a = f["w7"].numpy(copy=False)
        assert float(a.sum()) != 0 and _mapped_rss_kb(path.resolve()) > 0  # the check does see pages


def test_lazy_meta_after_close_and_a_changed_file(tmp_path):
    path = tmp_path / "m.onnx"
    shutil.copy(FIX / "small_cnn.onnx", path)
    f = read(path, "onnx")
    f.close()
    assert f["fc1.weight"].layout == "OI" and f.layers["/fc2/Gemm"].params["transB"] == 1
    f = read(path, "onnx")
    f.close()
    os.utime(path, ns=(1, 1))
    with pytest.raises(FormatError, match="changed on disk"):
        _ = f["fc1.weight"].meta


def test_scan_matches_iter_fields_on_random_messages():
    """pw.scan gives exactly iter_fields' fields for every message it does not hand back as slow."""
    rng = random.Random(3)
    parts = []
    for name in FIXTURES:
        g = onnx.load(str(FIX / name), load_external_data=False).graph
        parts += [m.SerializeToString() for m in (*g.node, *g.initializer, *g.input, *g.output)]
        parts += [a.SerializeToString() for n in g.node for a in n.attribute]
    msgs = []
    for _ in range(400):
        chunk = bytearray(rng.choice(parts))
        if rng.random() < 0.5:  # damage half of them
            for _ in range(rng.randrange(1, 3)):
                if chunk:
                    chunk[rng.randrange(len(chunk))] = rng.choice((0, 1, 0x7F, 0x80, 0xFF, rng.randrange(256)))
        msgs.append(bytes(chunk))
    buf = b"".join(msgs)
    ends = np.cumsum([len(m) for m in msgs])
    starts = ends - [len(m) for m in msgs]
    u8 = np.frombuffer(buf, np.uint8)
    for tail_buf in (None, buf):
        table, slow = pw.scan(u8.__getitem__, starts, ends, tail_buf)
        rows = list(zip(*(table[k].tolist() for k in ("msg", "field", "wire", "value", "start", "offset"))))
        for i, (s, e) in enumerate(zip(starts.tolist(), ends.tolist())):
            try:
                want = [(f, w, v[1] if w == pw.LEN else v, v[0] if w == pw.LEN else None, off)
                        for f, w, v, off in pw.iter_fields(buf, s, e)]
            except ConvertersError:
                assert i in slow
                continue
            if i in slow:
                continue
            got = [(f, w, v, st if w == pw.LEN else None, off) for m, f, w, v, st, off in rows if m == i]
            assert got == want, i
        assert len(slow) < len(msgs) // 3  # the undamaged ones and many damaged ones scan


def test_mutants_open_alike_on_both_paths(tmp_path, monkeypatch):
    """Mutated fixtures: the fast path and the walk agree on every outcome (the same arrays, meta
    and layers, or both raise a ConvertersError)."""
    rng = random.Random(7)
    sources = [(FIX / n).read_bytes() for n in ("small_cnn.onnx", "ch_ppocr_mobile_v2.0_cls_infer.onnx")]
    for i in range(120):
        data = bytearray(rng.choice(sources))
        for _ in range(rng.randrange(1, 4)):
            at = rng.randrange(len(data))
            op = rng.randrange(3)
            if op == 0:
                data[at] ^= 1 << rng.randrange(8)
            elif op == 1:
                data[at] = rng.choice((0, 1, 0x7F, 0x80, 0xFF))
            else:
                del data[at:at + rng.randrange(1, 8)]
        path = tmp_path / f"m{i}.onnx"
        path.write_bytes(bytes(data))
        outcomes = []
        for fast in (True, False):
            monkeypatch.setattr(onnx_files, "FAST", fast)
            try:
                outcomes.append(snapshot(path))
            except ConvertersError as e:
                outcomes.append(type(e).__name__)
        monkeypatch.setattr(onnx_files, "FAST", True)
        assert outcomes[0] == outcomes[1], i


_META_AFTER_CUT = r"""
import os, sys
sys.path.insert(0, os.getcwd())
import converters
from converters.errors import TruncatedError

path = sys.argv[1]
f = converters.read(path)
os.truncate(path, os.path.getsize(path) // 2)
try:
    [h.meta for h in f.values()]
    print("read")
except TruncatedError as e:
    print(e.file)
"""


def test_deferred_meta_of_a_file_cut_short_while_open(tmp_path):
    """The fast open works out meta on first access: a small model cut short before then is a
    TruncatedError naming the file (the walk reads a pread copy), not a SIGBUS in the map (child)."""
    import subprocess
    import sys

    inits = [numpy_helper.from_array(np.full((8, 8), i, np.float32), f"w{i}") for i in range(300)]
    nodes = [helper.make_node("Add", ["X", f"w{i}"], [f"y{i}"]) for i in range(300)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [8, 8])],
                              [helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, [8, 8]) for i in range(300)],
                              inits)
    path = tmp_path / "adds.onnx"
    onnx.save(helper.make_model(graph), path)
    with read(path) as f:  # whole, the meta reads
        assert f["w7"].meta["layer_type"] == "Add" and f["w7"].meta["source"] == "initializer"
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "-c", _META_AFTER_CUT, str(path)], capture_output=True, text=True, timeout=120,
                       cwd=root)
    assert r.returncode == 0, f"the child died with status {r.returncode} (-7: SIGBUS): {r.stderr[-3000:]}"
    assert r.stdout.strip() == str(path)
