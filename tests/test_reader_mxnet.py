"""[mxnet]/[gluon] reader: fixtures written by mxnet 1.9.1, compared bit-exactly with mx.nd.load.

mxnet lives in its own interpreter (.venv-mxnet); one subprocess loads every fixture with
mx.nd.load / mx.sym.load and writes what it got to .npz / .json, which the tests compare against.
"""
from __future__ import annotations

import json
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from converters.arrays import BFLOAT16
from converters.errors import ConvertersError, FormatError, TruncatedError, UnsupportedError
from converters.readers import detect, open_file
from converters.readers import mxnet as mxreader

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "fixtures" / "mxnet"
MXNET_PY = ROOT / ".venv-mxnet" / "bin" / "python"

# (fixture, needs numpy-shape semantics to load in mxnet)
PARAMS = [
    ("smallnet-0000.params", False),       # net.export(): arg:/aux: names, V2
    ("smallnet_gluon.params", False),      # save_parameters(): structural names
    ("smallnet_v1magic.params", False),    # V1 magic (re-encoded, mxnet reads it back)
    ("dtypes.params", False),              # every dtype mxnet 1.9 can write
    ("dtypes_legacy.params", False),       # no per-array magic, uint32 dims
    ("unnamed_list.params", False),        # mx.nd.save of a list: no names
    ("npshape_v3.params", True),           # V3 magic: 0-d scalar, zero-size array
    ("mtcnn_pnet/det1-0001.params", False),  # third-party, legacy encoding
]
SYMBOLS = ["smallnet-symbol.json", "mtcnn_pnet/det1-symbol.json"]

ORACLE = r'''
import json, sys
import numpy as np
import mxnet as mx
jobs = json.loads(sys.argv[1])
for job in jobs["params"]:
    if job["np_shape"]:
        with mx.util.np_shape(True):
            loaded = mx.nd.load(job["file"])
    else:
        loaded = mx.nd.load(job["file"])
    items = list(loaded.items()) if isinstance(loaded, dict) else [(str(i), a) for i, a in enumerate(loaded)]
    out, info = {}, {"names": [], "dtypes": [], "named": isinstance(loaded, dict)}
    for k, (name, a) in enumerate(items):
        arr = a.asnumpy()
        info["names"].append(name)
        info["dtypes"].append("bfloat16" if arr.dtype.names else str(arr.dtype))
        out[f"a{k}"] = arr.view(np.uint16) if arr.dtype.names else arr
    np.savez(job["out"] + ".npz", **out)
    json.dump(info, open(job["out"] + ".json", "w"))
for job in jobs["symbols"]:
    sym = mx.sym.load(job["file"])
    doc = json.loads(sym.tojson())
    nodes = doc["nodes"]
    ops = [{"name": n["name"], "op": n["op"], "attrs": n.get("attrs", {}),
            "inputs": [[nodes[i[0]]["name"], i[1]] for i in n["inputs"]]} for n in nodes if n["op"] != "null"]
    json.dump({"ops": ops, "arguments": sym.list_arguments(), "aux": sym.list_auxiliary_states()},
              open(job["out"], "w"))
'''


@pytest.fixture(scope="module")
def oracle(tmp_path_factory):
    """What mxnet itself loads from every fixture (one subprocess for all of them)."""
    if not MXNET_PY.exists():
        pytest.skip(f"mxnet side environment missing ({MXNET_PY}); create it to compare with mx.nd.load")
    out = tmp_path_factory.mktemp("mxnet_oracle")
    jobs = {"params": [{"file": str(FIX / f), "np_shape": np_shape, "out": str(out / f"p{i}")}
                       for i, (f, np_shape) in enumerate(PARAMS)],
            "symbols": [{"file": str(FIX / f), "out": str(out / f"s{i}.json")} for i, f in enumerate(SYMBOLS)]}
    proc = subprocess.run([str(MXNET_PY), "-c", ORACLE, json.dumps(jobs)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = {}
    for i, (f, _) in enumerate(PARAMS):
        info = json.loads((out / f"p{i}.json").read_text())
        with np.load(out / f"p{i}.npz") as npz:
            info["arrays"] = [npz[f"a{k}"] for k in range(len(info["names"]))]
        result[f] = info
    for i, f in enumerate(SYMBOLS):
        result[f] = json.loads((out / f"s{i}.json").read_text())
    return result


# --- bit-exact against mx.nd.load -------------------------------------------------------------

@pytest.fixture(params=["map", "pread"])
def both_walks(request, monkeypatch):
    """The test runs on the small-file path (headers and arrays in the memory map) and again on the
    big-file path (a pread per header and per array)."""
    if request.param == "pread":
        monkeypatch.setattr(mxreader, "WALK_MAP_MAX", 0)
    return request.param


@pytest.mark.mxnet
@pytest.mark.parametrize("fixture", [f for f, _ in PARAMS])
def test_every_array_equals_mx_nd_load(fixture, oracle, both_walks):
    expected = oracle[fixture]
    with open_file(FIX / fixture) as af:
        assert af.meta["named"] == expected["named"]
        assert [a.meta["stored_name"] for a in af.values()] == expected["names"]
        for handle, dtype, want in zip(af.values(), expected["dtypes"], expected["arrays"]):
            got = handle.numpy()
            assert handle.shape == want.shape == got.shape, handle.name
            if dtype == "bfloat16":
                assert got.dtype == BFLOAT16
                got = got.view(np.uint16)
            else:
                assert got.dtype == np.dtype(dtype), handle.name
            assert got.tobytes() == want.tobytes(), f"{fixture}: {handle.name} differs from mx.nd.load"


@pytest.mark.mxnet
@pytest.mark.parametrize("params, symbol", [("smallnet-0000.params", "smallnet-symbol.json"),
                                            ("mtcnn_pnet/det1-0001.params", "mtcnn_pnet/det1-symbol.json")])
def test_graph_equals_mx_sym_load(params, symbol, oracle):
    """Both JSON forms parse to what mxnet's own loader (which upgrades legacy JSON) sees."""
    expected = oracle[symbol]
    with open_file(FIX / params) as af:
        layers = list(af.layers.values())
        assert [(lay.name, lay.type) for lay in layers] == [(o["name"], o["op"]) for o in expected["ops"]]
        for layer, op in zip(layers, expected["ops"]):
            assert layer.params == op["attrs"], layer.name
            assert layer.inputs == [n if k == 0 else f"{n}:{k}" for n, k in op["inputs"]], layer.name
        held = {a.meta["stored_name"].partition(":")[2] for a in af.values()}
        assert held == set(expected["arguments"] + expected["aux"]) - {"data"}
        assert af.meta["graph_inputs"] == ["data"]


# --- the symbol graph, both forms ---------------------------------------------------------------

def test_nnvm_symbol_layers_and_array_meta():
    with open_file(FIX / "smallnet-0000.params") as af:
        assert af.framework == "mxnet"
        assert af.meta["symbol"].endswith("smallnet-symbol.json")
        assert af.meta["symbol_form"] == "nnvm" and af.meta["mxnet_version"] == 10901
        assert [lay.type for lay in af.layers.values()] == [
            "Convolution", "BatchNorm", "LeakyReLU", "Convolution", "LeakyReLU", "Pooling", "FullyConnected"]
        bn = af.layers["smallnet_batchnorm0_fwd"]
        assert bn.params["fix_gamma"] == "False" and bn.params["eps"] == "1e-05"
        assert bn.inputs == ["smallnet_conv0_fwd", "smallnet_batchnorm0_gamma", "smallnet_batchnorm0_beta",
                             "smallnet_batchnorm0_running_mean", "smallnet_batchnorm0_running_var"]
        assert bn.arrays == bn.inputs[1:]
        assert bn.outputs == ["smallnet_prelu0_fwd"]
        assert af.layers["smallnet_conv1_fwd"].params["stride"] == "(2, 2)"
        assert af.layers["smallnet_leakyrelu0_fwd"].params == {"act_type": "leaky", "slope": "0.1"}
        assert af.meta["graph_heads"] == [["smallnet_dense0_fwd", 0]]
        graph = {n["name"]: n for n in af.meta["graph"]}
        assert graph["smallnet_conv0_weight"]["attrs"]["__shape__"] == "(4, 3, 3, 3)"

        w = af["smallnet_conv0_weight"]
        assert (w.meta["layer"], w.meta["layer_type"], w.role, w.layout, w.meta["index"]) == \
            ("smallnet_conv0_fwd", "Convolution", "weight", "OIHW", 0)
        assert w.meta["prefix"] == "arg" and w.meta["stored_name"] == "arg:smallnet_conv0_weight"
        assert af["smallnet_dense0_weight"].layout == "OI"
        assert af["smallnet_conv0_bias"].role == "bias" and af["smallnet_conv0_bias"].layout is None
        mean = af["smallnet_batchnorm0_running_mean"]
        assert (mean.meta["prefix"], mean.role, mean.meta["index"]) == ("aux", "running_mean", 2)
        assert af["smallnet_batchnorm0_running_var"].role == "running_var"
        alpha = af["smallnet_prelu0_alpha"]
        assert (alpha.role, alpha.meta["layer_type"]) == ("weight", "LeakyReLU")
        assert af.layers[alpha.layer].params["act_type"] == "prelu"


def test_legacy_symbol_third_party_mtcnn():
    with open_file(FIX / "mtcnn_pnet" / "det1-0001.params") as af:
        assert af.meta["symbol_form"] == "legacy" and af.meta["mxnet_version"] is None
        assert af.meta["version"] == "legacy"  # the arrays have no magic either
        assert len(af) == 13  # 14 graph arguments, `data` is the input
        conv1 = af.layers["conv1"]
        assert conv1.type == "Convolution" and conv1.inputs == ["data", "conv1_weight", "conv1_bias"]
        assert conv1.params["kernel"] == "(3,3)" and conv1.params["num_filter"] == "10"
        assert af.layers["prelu1"].params["act_type"] == "prelu"
        assert af.layers["pool1"].params["pooling_convention"] == "full"
        assert af.layers["prelu3"].outputs == ["conv4_2", "conv4_1"]  # the two heads branch here
        assert af.meta["graph_heads"] == [["conv4_2", 0], ["prob1", 0]]
        gamma = af["prelu1_gamma"]
        assert (gamma.shape, gamma.role, gamma.layer, gamma.meta["layer_type"]) == ((10,), "weight", "prelu1",
                                                                                     "LeakyReLU")
        assert af["conv1_weight"].shape == (10, 3, 3, 3) and af["conv1_weight"].layout == "OIHW"


def test_symbol_option_explicit_and_off():
    with open_file(FIX / "smallnet_v1magic.params") as af:  # name does not follow <stem>-NNNN.params
        assert af.layers == {} and "graph" not in af.meta
        assert af["smallnet_conv0_weight"].layer == "smallnet_conv0"  # from the name suffix
    with open_file(FIX / "smallnet_v1magic.params", symbol=FIX / "smallnet-symbol.json") as af:
        assert af.meta["version"] == "V1"
        assert af["smallnet_conv0_weight"].meta["layer_type"] == "Convolution"
    with open_file(FIX / "smallnet-0000.params", symbol=False) as af:
        assert af.layers == {}


def test_symbol_file_alone_is_refused_with_a_hint():
    path = FIX / "smallnet-symbol.json"
    assert detect(path) == "mxnet"
    with pytest.raises(FormatError) as e:
        open_file(path)
    assert "smallnet-0000.params" in e.value.hint and e.value.file == str(path)


def test_corrupt_symbol_json(tmp_path):
    shutil.copy(FIX / "smallnet-0000.params", tmp_path / "m-0000.params")
    doc = json.loads((FIX / "smallnet-symbol.json").read_text())
    doc["nodes"][3]["inputs"].append([999, 0, 0])
    (tmp_path / "m-symbol.json").write_text(json.dumps(doc))
    with pytest.raises(FormatError) as e:
        open_file(tmp_path / "m-0000.params")
    assert e.value.file.endswith("m-symbol.json") and e.value.array == "smallnet_conv0_fwd"


# --- names, roles, detection --------------------------------------------------------------------

def test_gluon_save_parameters_names_and_roles():
    path = FIX / "smallnet_gluon.params"
    assert detect(path) == "gluon"
    with open_file(path) as af:
        assert af.framework == "gluon"
        roles = {k: (a.layer, a.role, a.meta["index"]) for k, a in af.items()}
        assert roles["features.0.weight"] == ("features.0", "weight", 0)
        assert roles["features.0.bias"] == ("features.0", "bias", 1)
        assert roles["features.1.gamma"] == ("features.1", "weight", 0)
        assert roles["features.1.beta"] == ("features.1", "bias", 1)
        assert roles["features.1.running_mean"] == ("features.1", "running_mean", 2)
        assert roles["features.1.running_var"] == ("features.1", "running_var", 3)
        assert roles["features.2.alpha"] == ("features.2", "weight", 0)
        assert "prefix" not in af["output.weight"].meta
    with open_file(FIX / "smallnet-0000.params") as export, open_file(path) as params:
        # the same network: same numbers, in the same order, under the two naming schemes
        for a, b in zip(export.values(), params.values()):
            assert a.numpy().tobytes() == b.numpy().tobytes()


def test_detect_and_framework_name():
    assert detect(FIX / "smallnet-0000.params") == "mxnet"
    assert detect(FIX / "mtcnn_pnet" / "det1-0001.params") == "mxnet"
    assert detect(FIX / "unnamed_list.params") == "mxnet"
    with open_file(FIX / "smallnet-0000.params", framework="gluon") as af:
        assert af.framework == "gluon"


def test_prefix_kept_when_stripping_collides(tmp_path):
    path = tmp_path / "c.params"
    path.write_bytes(_list_file([_v2(np.ones(2, "f4")), _v2(np.zeros(2, "f4"))], ["arg:x", "aux:x"]))
    with open_file(path) as af:
        assert list(af) == ["arg:x", "aux:x"]
        assert af["aux:x"].meta["prefix"] == "aux" and af["aux:x"].role == "running_stat"
    with open_file(FIX / "smallnet-0000.params", strip_prefix=False) as af:
        assert "arg:smallnet_conv0_weight" in af


def test_arrays_are_lazy_memory_map_views():
    with open_file(FIX / "dtypes.params") as af:
        view = af["f64"].numpy(copy=False)
        assert not view.flags.writeable and not view.flags.owndata
        assert af["f64"].numpy().flags.owndata


def test_v3_scalar_and_zero_size():
    with open_file(FIX / "npshape_v3.params") as af:
        assert af.meta["version"] == "V3"
        assert af["scalar"].shape == () and af["scalar"].numpy() == np.float32(3.5)
        assert af["empty"].shape == (2, 0) and af["empty"].numpy().size == 0


def test_none_array_and_mshadow_flags_mxnet19_cannot_write(tmp_path):
    """A 'none' NDArray (ndim 0 in V2) is only its shape; flags 8-11 come from mshadow's enum."""
    none = struct.pack("<Iii", mxreader.V2_MAGIC, 0, 0)
    int16 = _v2(np.array([-2, 3], "<i2"), flag=8)
    u64 = _v2(np.array([2**63 + 5], "<u8"), flag=11)
    path = tmp_path / "n.params"
    path.write_bytes(_list_file([none, int16, u64], ["empty", "i16", "u64"]))
    with open_file(path) as af:
        assert af["empty"].meta["none"] is True and af["empty"].shape == (0,)
        assert af["i16"].numpy().tolist() == [-2, 3]
        assert af["u64"].numpy().tolist() == [2**63 + 5]


# --- the fast walk -----------------------------------------------------------------------------

def _careful_records(path: Path) -> list:
    """Every record as the field-by-field walk alone reads it."""
    view = mxreader.FileView(path, pread_headers=True)
    try:
        (count,) = view.unpack("<Q", 16)
        records, pos = [], 24
        for i in range(count):
            rec, pos = mxreader._parse_ndarray(view, pos, i)
            records.append(rec)
        return records
    finally:
        view.close()


def _mixed_file(tmp_path) -> Path:
    """Thousands of arrays in every encoding, with the fast walk's edge cases between them."""
    rng = np.random.default_rng(0)
    legacy = struct.pack("<I2I", 2, 2, 3) + struct.pack("<iii", 1, 0, 0) + rng.random((2, 3), "f4").tobytes()
    v1 = (struct.pack("<Ii2q", mxreader.V1_MAGIC, 2, 3, 2) + struct.pack("<iii", 2, 1, 1)
          + rng.random((3, 2)).tobytes())
    v3_scalar = struct.pack("<Iii", mxreader.V3_MAGIC, 0, 0) + struct.pack("<iii", 1, 0, 0) + b"\0\0\x60\x40"
    none = struct.pack("<Iii", mxreader.V2_MAGIC, 0, 0)
    kinds = [lambda i: _v2(rng.random((16, 16), "f4")), lambda i: _v2(rng.random(64, "f4").astype("f2")),
             lambda i: _v2(np.arange(i % 7 + 1, dtype="i8")), lambda i: _v2(np.zeros((3, 0), "f4")),
             lambda i: _v2(rng.random((1,) * 9, "f4")), lambda i: legacy, lambda i: v1, lambda i: v3_scalar,
             lambda i: none, lambda i: _v2(np.array([True, False]))]
    arrays = [kinds[i % len(kinds)](i) for i in range(3000)]
    path = tmp_path / "mixed.params"
    path.write_bytes(_list_file(arrays, [f"{'arg' if i % 3 else 'aux'}:l{i // 2}_{'weight' if i % 2 else 'bias'}"
                                         for i in range(len(arrays))]))
    return path


def test_fast_walk_reads_what_the_careful_walk_reads(tmp_path, both_walks):
    files = [FIX / f for f, _ in PARAMS] + [_mixed_file(tmp_path)]
    for path in files:
        view = mxreader.FileView(path, pread_headers=True)
        try:
            fast = mxreader._parse(view)[0]
        finally:
            view.close()
        careful = _careful_records(path)
        strip = [(r.index, r.offset, r.encoding, r.storage, r.shape, r.dtype, r.context, r.data_offset, r.none)
                 for r in careful]
        assert strip == [(r.index, r.offset, r.encoding, r.storage, r.shape, r.dtype, r.context, r.data_offset,
                          r.none) for r in fast], path.name
        if path.name == "mixed.params":
            assert sum(r.checked for r in fast) > 1000  # the fast walk took the common arrays


def test_mixed_file_arrays_and_meta(tmp_path, both_walks):
    path = _mixed_file(tmp_path)
    with open_file(path) as af:
        assert len(af) == 3000 and af.framework == "mxnet"
        assert af["l0_bias"].meta == {"stored_name": "aux:l0_bias", "encoding": "V2", "prefix": "aux",
                                      "context": "cpu(0)", "layer": "l0", "role": "bias", "index": 0}
        assert af["l0_weight"].meta["index"] == 1 and af["l0_weight"].dtype == np.float16
        assert af["l1_bias"].dtype == np.int64 and af["l1_bias"].numpy().tolist() == [0, 1, 2]
        assert af["l1_weight"].shape == (3, 0) and af["l1_weight"].numpy().size == 0
        assert af["l2_bias"].shape == (1,) * 9 and af["l2_bias"].numpy().shape == (1,) * 9
        assert af["l2_weight"].shape == (2, 3) and af["l2_weight"].meta["encoding"] == "legacy"
        assert af["l3_bias"].meta["context"] == "gpu(1)" and af["l3_bias"].numpy().dtype == np.float64
        assert af["l3_weight"].shape == () and af["l3_weight"].numpy() == np.float32(3.5)
        assert af["l4_bias"].meta["none"] is True and af["l4_bias"].numpy().shape == (0,)
        assert af["l4_weight"].numpy().tolist() == [True, False]
        assert af.meta["version"] == ["V1", "V2", "V3", "legacy"]
        every = af.numpy()
    with open_file(path) as af:  # the arrays are their own: they outlive the file
        for k, a in af.items():
            assert a.numpy().tobytes() == every[k].tobytes(), k


def test_detect_walk_is_reused_only_for_the_same_bytes(tmp_path):
    """detect() walks the file for its names; open() takes that walk only if the file is unchanged."""
    path = tmp_path / "w.params"
    path.write_bytes(_list_file([_v2(np.ones(4, "f4"))], ["arg:x_weight"]))
    assert detect(path) == "mxnet" and mxreader._LAST_WALK
    path.write_bytes(_list_file([_v2(np.full(4, 2, "f4"))], ["arg:y_weight"]))  # same size, maybe same mtime
    with open_file(path, "mxnet") as af:
        assert list(af) == ["y_weight"] and af["y_weight"].numpy().tolist() == [2, 2, 2, 2]
    assert not mxreader._LAST_WALK
    assert detect(path) == "mxnet"
    with open_file(path, "mxnet") as af:
        assert list(af) == ["y_weight"]
    assert not mxreader._LAST_WALK  # taken once


# --- bad input ----------------------------------------------------------------------------------

def _v2(arr: np.ndarray, flag: int | None = None, stype: int = 0) -> bytes:
    flags = {v: k for k, v in mxreader.TYPE_FLAGS.items()}
    flag = flags[arr.dtype] if flag is None else flag
    return (struct.pack("<Iii", mxreader.V2_MAGIC, stype, arr.ndim) + struct.pack(f"<{arr.ndim}q", *arr.shape)
            + struct.pack("<iii", 1, 0, flag) + arr.tobytes())


def _list_file(arrays: list[bytes], names: list[str]) -> bytes:
    out = struct.pack("<QQQ", mxreader.LIST_MAGIC, 0, len(arrays)) + b"".join(arrays)
    out += struct.pack("<Q", len(names))
    for n in names:
        out += struct.pack("<Q", len(n.encode())) + n.encode()
    return out


def _patched(tmp_path, fixture: str, offset: int, fmt: str, value) -> Path:
    data = bytearray((FIX / fixture).read_bytes())
    struct.pack_into(fmt, data, offset, value)
    path = tmp_path / Path(fixture).name
    path.write_bytes(bytes(data))
    return path


# offsets in dtypes.params (V2): 24 magic, 28 stype, 32 ndim, 36 dims (2 x int64), 52 ctx, 60 flag
@pytest.mark.parametrize("offset, fmt, value, error, array", [
    (0, "<Q", 0x113, FormatError, None),                 # wrong list magic
    (16, "<Q", 2**62, TruncatedError, None),             # array count larger than the file
    (28, "<i", 1 << 20, FormatError, "#0"),              # unknown storage type
    (32, "<i", 0x7FFFFFFF, TruncatedError, "#0"),        # ndim larger than the file
    (32, "<i", -7, FormatError, "#0"),                   # negative ndim
    (36, "<q", 2**40, TruncatedError, "#0"),             # a dim whose data is past the end
    (36, "<q", -2, FormatError, "#0"),                   # negative dim
    (52, "<i", 77, FormatError, "#0"),                   # not an MXNet device type
    (60, "<i", 99, UnsupportedError, "#0"),              # unknown type flag
])
def test_corrupt_headers_raise_before_allocating(tmp_path, offset, fmt, value, error, array, both_walks):
    path = _patched(tmp_path, "dtypes.params", offset, fmt, value)
    with pytest.raises(error) as e:
        open_file(path, framework="mxnet")
    assert e.value.file == str(path) and e.value.offset is not None and e.value.array == array


def test_legacy_ndim_larger_than_file(tmp_path, both_walks):
    path = _patched(tmp_path, "mtcnn_pnet/det1-0001.params", 24, "<I", 0x10000000)
    with pytest.raises(TruncatedError) as e:
        open_file(path)
    assert e.value.array == "#0" and e.value.offset == 28


def test_name_count_and_length_larger_than_file(tmp_path, both_walks):
    raw = (FIX / "unnamed_list.params").read_bytes()
    tail = len(raw) - 8  # the name count of a saved list (0)
    for fmt, value, extra in (("<Q", 2**61, b""), ("<Q", 1, struct.pack("<Q", 2**63))):
        path = tmp_path / "names.params"
        path.write_bytes(raw[:tail] + struct.pack(fmt, value) + extra)
        with pytest.raises(TruncatedError) as e:
            open_file(path)
        assert e.value.offset is not None and e.value.file == str(path)


def test_names_and_arrays_count_mismatch(tmp_path):
    raw = (FIX / "unnamed_list.params").read_bytes()
    path = tmp_path / "mismatch.params"
    path.write_bytes(raw[:-8] + struct.pack("<QQ", 1, 1) + b"w")  # 2 arrays, 1 name
    with pytest.raises(FormatError, match="2 arrays but 1 names"):
        open_file(path)


@pytest.mark.parametrize("cut", [0, 10, 24, 40, 300, -5])
def test_truncated_file(tmp_path, cut, both_walks):
    raw = (FIX / "smallnet-0000.params").read_bytes()
    path = tmp_path / "cut.params"
    path.write_bytes(raw[:cut] if cut >= 0 else raw[:cut])
    with pytest.raises(TruncatedError) as e:
        open_file(path, framework="mxnet")
    assert e.value.file == str(path) and e.value.offset is not None


def test_sparse_storage_is_refused_by_name():
    with pytest.raises(UnsupportedError) as e:
        open_file(FIX / "sparse.params")
    assert e.value.array == "rows" and "row_sparse" in str(e.value) and e.value.offset > 24


def test_errors_are_converters_errors(tmp_path):
    path = tmp_path / "not.params"
    path.write_bytes(b"\x00" * 7)
    with pytest.raises(ConvertersError):
        open_file(path, framework="gluon")
    with pytest.raises(FormatError):
        open_file(tmp_path / "missing.params", framework="mxnet")


def test_early_nnvm_attr_key(tmp_path):
    """mxnet 0.9-1.0 wrote NNVM graphs with `attr` instead of `attrs`: same layers either way."""
    doc = json.loads((FIX / "smallnet-symbol.json").read_text())
    for node in doc["nodes"]:
        if "attrs" in node:
            node["attr"] = node.pop("attrs")
    (tmp_path / "old-symbol.json").write_text(json.dumps(doc))
    with open_file(FIX / "smallnet-0000.params") as new, \
            open_file(FIX / "smallnet-0000.params", symbol=tmp_path / "old-symbol.json") as old:
        assert old.meta["symbol_form"] == "nnvm"
        assert [(lay.name, lay.type, lay.params, lay.inputs, lay.arrays) for lay in old.layers.values()] == \
            [(lay.name, lay.type, lay.params, lay.inputs, lay.arrays) for lay in new.layers.values()]
