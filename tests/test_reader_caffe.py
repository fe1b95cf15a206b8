"""[caffe] reader: every blob compared bit-exactly with the protobuf reference parser (caffe.proto
compiled by grpc_tools.protoc) and with OpenCV's Caffe importer, on real and generated files."""
from __future__ import annotations

import importlib.util
import shutil
import struct
import time
from pathlib import Path

import numpy as np
import pytest

from converters.errors import ConvertersError, FormatError, TruncatedError
from converters.readers import _binary, _prototxt, caffe
from converters.readers._binary import FileView

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "fixtures" / "caffe"
REAL_RES10 = FIX / "res10_ssd"  # the real file, copied from shared/realdata (fixtures/README.md)
RES10_MODEL = REAL_RES10 / "res10_300x300_ssd_iter_140000.caffemodel"

GENERATED = ["v1_layers.caffemodel", "legacy_shapes.caffemodel", "double_data.caffemodel",
             "fork_unknown.caffemodel", "bn_scale/bn_scale.caffemodel", "res10_head/res10_head.caffemodel"]
ALL_FIXTURES = ["mtcnn_pnet/det1.caffemodel"] + GENERATED


def _load_make_fixtures():
    spec = importlib.util.spec_from_file_location("caffe_make_fixtures", FIX / "make_fixtures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


MK = _load_make_fixtures()


@pytest.fixture(scope="module")
def pb(tmp_path_factory):
    pytest.importorskip("grpc_tools")
    return MK.compile_caffe_proto(tmp_path_factory.mktemp("caffe_pb2"))


def reference_blobs(pb, path) -> dict:
    """{`<layer>/<i>`: array} as google.protobuf parses the file (the reference parser)."""
    net = pb.NetParameter()
    net.ParseFromString(Path(path).read_bytes())
    out = {}
    for layer in list(net.layer) + list(net.layers):
        for i, blob in enumerate(layer.blobs):
            if blob.HasField("shape"):
                shape = tuple(blob.shape.dim)
            elif any(blob.HasField(f) for f in ("num", "channels", "height", "width")):
                shape = (blob.num, blob.channels, blob.height, blob.width)
            else:
                shape = (len(blob.data) or len(blob.double_data),)
            if len(blob.data):
                arr = np.array(blob.data, dtype=np.float32)
            else:
                arr = np.array(blob.double_data, dtype=np.float64)
            out[f"{layer.name}/{i}"] = arr.reshape(shape)
    return out


def assert_bit_equal(a: np.ndarray, b: np.ndarray, name=""):
    assert a.dtype == b.dtype and a.shape == b.shape, (name, a.dtype, a.shape, b.dtype, b.shape)
    view = np.uint32 if a.dtype.itemsize == 4 else np.uint64
    assert np.array_equal(a.view(view), b.view(view)), name


# ------------------------------------------------------------------- reference: google.protobuf

@pytest.mark.parametrize("rel", ALL_FIXTURES)
def test_every_blob_matches_protobuf(pb, rel):
    ref = reference_blobs(pb, FIX / rel)
    with caffe.open(FIX / rel) as f:
        assert list(f) == list(ref)  # same names, same (file) order
        for name, expected in ref.items():
            assert_bit_equal(f[name].numpy(), expected, name)


@pytest.mark.parametrize("rel", ALL_FIXTURES)
def test_header_walk_by_pread_reads_what_the_map_walk_reads(pb, rel, monkeypatch):
    """Big files walk their headers in pread blocks (FileView.headers), not through the map."""
    with caffe.open(FIX / rel) as f:
        by_map = {k: (h.shape, h.dtype, h.meta) for k, h in f.items()}, {k: vars(v) for k, v in f.layers.items()}
    monkeypatch.setattr(_binary, "WALK_MAP_MAX", 0)
    ref = reference_blobs(pb, FIX / rel)
    with caffe.open(FIX / rel) as f:
        assert not isinstance(f._closer.__self__.headers(), (bytes, type(f._closer.__self__.buf)))
        assert ({k: (h.shape, h.dtype, h.meta) for k, h in f.items()}, {k: vars(v) for k, v in f.layers.items()}) \
            == by_map
        for name, expected in ref.items():
            assert_bit_equal(f[name].numpy(), expected, name)


@pytest.mark.skipif(not RES10_MODEL.exists(), reason="real res10 SSD model not in fixtures/caffe/res10_ssd")
def test_real_res10_matches_protobuf_and_opencv(pb):
    ref = reference_blobs(pb, RES10_MODEL)
    t0 = time.perf_counter()
    net = pb.NetParameter()
    net.ParseFromString(RES10_MODEL.read_bytes())
    t_protobuf = time.perf_counter() - t0
    t0 = time.perf_counter()
    with caffe.open(RES10_MODEL) as f:
        t_open = time.perf_counter() - t0
        got = f.numpy()
        t_all = time.perf_counter() - t0
        assert len(got) == len(ref) == 104
        for name, expected in ref.items():
            assert_bit_equal(got[name], expected, name)
        assert f.meta["prototxt"].endswith("deploy.prototxt") and f.meta["prototxt_auto"]
        assert f.meta["input"] == {"data": [1, 3, 300, 300]}
        assert {"mbox_loss", "data"} <= {d["name"] for d in f.meta["layers_not_in_prototxt"]}
        assert "LayerParameter.206" in f.meta["unknown_layer_fields"]  # SSD's norm_param
        _compare_with_opencv(f, REAL_RES10 / "deploy.prototxt", RES10_MODEL)
    print(f"\nres10 ({RES10_MODEL.stat().st_size} B): protobuf ParseFromString {t_protobuf * 1e3:.1f} ms; "
          f"caffe reader open {t_open * 1e3:.1f} ms, open + every array copied {t_all * 1e3:.1f} ms")


# ----------------------------------------------------------------------- reference: OpenCV dnn

def _compare_with_opencv(f, prototxt, model) -> int:
    """OpenCV's importer keeps Caffe blobs as stored (1-D blobs become (N, 1); InnerProduct with
    transpose: true is relabelled (num_output, K) over the same bytes), so compare flat data."""
    cv2 = pytest.importorskip("cv2")
    if not hasattr(cv2.dnn, "readNetFromCaffe"):
        pytest.skip("this OpenCV has no Caffe importer (dropped in OpenCV 5)")
    net = cv2.dnn.readNetFromCaffe(str(prototxt), str(model))
    compared = 0
    for layer_name in net.getLayerNames():
        blobs = net.getLayer(net.getLayerId(layer_name)).blobs
        for i, blob in enumerate(blobs):
            ours = f[f"{layer_name}/{i}"].numpy()
            assert blob.size == ours.size, (layer_name, i)
            assert_bit_equal(np.ascontiguousarray(blob).ravel(), ours.ravel(), f"{layer_name}/{i}")
            compared += 1
    return compared


@pytest.mark.parametrize("rel, prototxt, expected", [
    ("mtcnn_pnet/det1.caffemodel", "mtcnn_pnet/det1.prototxt", 13),
    ("bn_scale/bn_scale.caffemodel", "bn_scale/deploy.prototxt", 13),
    ("res10_head/res10_head.caffemodel", "res10_head/deploy.prototxt", 20),
])
def test_blobs_match_opencv(rel, prototxt, expected):
    with caffe.open(FIX / rel) as f:
        assert _compare_with_opencv(f, FIX / prototxt, FIX / rel) == expected == len(f)


def test_bn_scale_runs_in_opencv_with_the_same_blobs():
    """The generated net is a real, runnable Caffe net (OpenCV forward gives class scores)."""
    cv2 = pytest.importorskip("cv2")
    net = cv2.dnn.readNetFromCaffe(str(FIX / "bn_scale/deploy.prototxt"), str(FIX / "bn_scale/bn_scale.caffemodel"))
    net.setInput(np.ones((1, 3, 8, 8), np.float32))
    out = net.forward()
    assert out.shape == (1, 3) and abs(float(out.sum()) - 1.0) < 1e-5


# ---------------------------------------------------------------------- architecture and meta

def test_mtcnn_layers_follow_the_deploy_prototxt():
    with caffe.open(FIX / "mtcnn_pnet/det1.caffemodel") as f:
        assert f.meta["prototxt"].endswith("det1.prototxt") and f.meta["prototxt_auto"] is True
        assert f.meta["version"] == "V2 (layer)" and f.meta["name"] == "12Net"
        assert f.meta["input"] == {"data": [1, 3, 12, 12]}
        assert list(f.layers) == ["conv1", "PReLU1", "pool1", "conv2", "PReLU2", "conv3", "PReLU3",
                                  "conv4-1", "conv4-2", "prob1"]
        not_in = {d["name"]: d for d in f.meta["layers_not_in_prototxt"]}
        assert {"data12", "loss1", "loss2", "accuracy1", "silence"} <= set(not_in)
        conv1 = f.layers["conv1"]
        assert conv1.inputs == ["data"] and conv1.arrays == ["conv1/0", "conv1/1"]
        assert conv1.params["convolution_param"]["num_output"] == 10
        assert conv1.params["kernel"] == [3, 3] and conv1.params["stride"] == [1, 1]
        assert f.layers["pool1"].params["ceil_mode"] is True  # Caffe's default rounding
        assert f.layers["prob1"].arrays == []
        a = f["conv1/0"]
        assert a.shape == (10, 3, 3, 3) and a.dtype == np.float32
        assert a.meta == {"layer": "conv1", "layer_type": "Convolution", "index": 0, "role": "weight",
                          "layout": "OIHW", "offset": a.meta["offset"]}
        assert f["conv1/1"].role == "bias" and f["PReLU1/0"].role == "weight"


def test_without_prototxt_the_caffemodel_net_is_the_architecture(tmp_path):
    with caffe.open(FIX / "mtcnn_pnet/det1.caffemodel", prototxt=False) as f:
        assert f.meta["prototxt"] is None
        assert list(f.layers)[0] == "data12" and "loss1" in f.layers and "prob1" not in f.layers
        assert f.layers["conv1"].inputs == ["data12face"]
    shutil.copy(FIX / "mtcnn_pnet/det1.caffemodel", tmp_path / "det1.caffemodel")
    for name in ("train.prototxt", "deploy.prototxt"):  # two candidates: ambiguous, none used
        shutil.copy(FIX / "mtcnn_pnet/det1.prototxt", tmp_path / name)
    with caffe.open(tmp_path / "det1.caffemodel") as f:
        assert f.meta["prototxt"] is None and len(f) == 13
    with caffe.open(tmp_path / "det1.caffemodel", prototxt=tmp_path / "deploy.prototxt") as f:
        assert f.meta["prototxt_auto"] is False and "prob1" in f.layers


def test_roles_layouts_and_params_of_bn_scale():
    with caffe.open(FIX / "bn_scale/bn_scale.caffemodel") as f:
        roles = {k: (a.role, a.layout) for k, a in f.items()}
        assert roles == {
            "conv1/0": ("weight", "OIHW"),
            "bn1/0": ("running_mean", None), "bn1/1": ("running_var", None), "bn1/2": ("running_stat", None),
            "scale1/0": ("weight", None), "scale1/1": ("bias", None), "prelu1/0": ("weight", None),
            "deconv1/0": ("weight", "IOHW"), "deconv1/1": ("bias", None),
            "fc_t/0": ("weight", "IO"), "fc_t/1": ("bias", None), "fc/0": ("weight", "OI"), "fc/1": ("bias", None)}
        assert f["bn1/2"].numpy().tolist() == [999.0]  # the scale factor mean and var are divided by
        p = f.layers["conv1"].params
        assert p["kernel"] == [3, 1] and p["pad"] == [1, 0] and p["convolution_param"]["bias_term"] is False
        bn = f.layers["bn1"].params["batch_norm_param"]
        assert bn["eps"] == pytest.approx(0.001) and bn["use_global_stats"] is True
        assert bn["moving_average_fraction"] == pytest.approx(0.999)
        assert f.layers["scale1"].params["scale_param"] == {"axis": 1, "num_axes": 1, "filler": None,
                                                           "bias_term": True, "bias_filler": None}
        assert f.layers["pool1"].params["pooling_param"]["pool"] == "AVE"
        assert f.layers["fc_t"].params["inner_product_param"]["transpose"] is True
        assert f.meta["input"] == {"data": [1, 3, 8, 8]}
        assert [d["name"] for d in f.meta["layers_not_in_prototxt"]] == ["data", "loss"]
        assert f.meta["prototxt_layers_without_blobs"] == []


def test_v1_layers_with_legacy_shapes():
    with caffe.open(FIX / "v1_layers.caffemodel") as f:
        assert f.meta["version"] == "V1 (layers)" and f.meta["input"] == {"data": [1, 1, 8, 8]}
        assert [(k, layer.type) for k, layer in f.layers.items()] == [
            ("conv1", "Convolution"), ("relu1", "ReLU"), ("pool1", "Pooling"), ("ip1", "InnerProduct"),
            ("prob", "Softmax")]
        assert f.layers["pool1"].params["pooling_param"]["pool"] == "AVE"
        assert f.layers["conv1"].params["pad"] == [1, 1]
        ip = f["ip1/0"]
        assert ip.shape == (1, 1, 3, 64) and ip.meta["shape_source"] == "legacy" and ip.role == "weight"
        assert ip.layout is None  # 4-D legacy shape: the OI letters would not describe it
        assert f["conv1/1"].shape == (1, 1, 1, 4) and f["conv1/1"].role == "bias"


def test_legacy_shapes_and_double_data():
    with caffe.open(FIX / "legacy_shapes.caffemodel") as f:
        assert f["conv/0"].shape == (2, 3, 1, 1) and f["conv/0"].meta["shape_source"] == "legacy"
    with caffe.open(FIX / "double_data.caffemodel") as f:
        assert f["fc/0"].dtype == np.float64 and f["fc/0"].shape == (3, 5) and f["fc/0"].layout == "OI"


def test_forked_proto_fields_and_unknown_layer_types_are_skipped():
    with caffe.open(FIX / "fork_unknown.caffemodel") as f:
        assert f.meta["unknown_net_fields"] == [60]
        assert f.meta["unknown_layer_fields"] == ["LayerParameter.250", "LayerParameter.251"]
        assert f.layers["fancy"].type == "MyFancyLayer" and f["fancy/0"].role == "other"
        old = f["old/0"]  # non-packed floats: a strided view over the values between their keys
        assert old.shape == (2, 3) and old.layout == "OI"
        assert f.layers["pool"].params["ceil_mode"] is False
        assert f.layers["pool"].params["pooling_param"]["round_mode"] == "FLOOR"
        assert f.layers["pool"].params["kernel"] == [2, 2]


def test_arrays_stay_on_disk_until_asked(monkeypatch):
    calls = []
    original = FileView.array
    monkeypatch.setattr(FileView, "array", lambda self, *a, **k: calls.append(a) or original(self, *a, **k))
    f = caffe.open(FIX / "res10_head/res10_head.caffemodel")
    try:
        assert calls == []
        view = f["layer_64_1_conv2_h/0"].numpy(copy=False)
        assert len(calls) == 1 and not view.flags.writeable and not view.flags.owndata
        assert view.shape == (32, 32, 3, 3)
    finally:
        del view
        f.close()


# --------------------------------------------------------------------------------- bad input

def test_truncated_in_the_middle_of_a_blob(tmp_path):
    data = (FIX / "mtcnn_pnet/det1.caffemodel").read_bytes()
    with caffe.open(FIX / "mtcnn_pnet/det1.caffemodel") as f:
        cut = f["conv3/0"].meta["offset"] + 1000
    bad = tmp_path / "cut.caffemodel"
    bad.write_bytes(data[:cut])
    with pytest.raises(TruncatedError) as e:
        caffe.open(bad, prototxt=False)
    assert e.value.array == "conv3" and e.value.file == str(bad) and e.value.offset is not None
    assert "conv3" in str(e.value) and str(bad) in str(e.value)


def test_blob_dims_that_do_not_match_its_data(pb, tmp_path):
    net = pb.NetParameter()
    layer = net.layer.add(name="bad", type="InnerProduct")
    blob = layer.blobs.add()
    blob.shape.dim.extend([2, 3])
    blob.data.extend([1.0] * 5)
    path = tmp_path / "dims.caffemodel"
    path.write_bytes(net.SerializeToString())
    with pytest.raises(FormatError) as e:
        caffe.open(path)
    assert e.value.array == "bad/0" and e.value.offset is not None and "needs 6 values" in str(e.value)


def test_lengths_larger_than_the_file(tmp_path):
    huge_layer = MK.key(100, 2) + MK.varint(10**12) + MK.len_field(1, b"big")
    path = tmp_path / "huge.caffemodel"
    path.write_bytes(MK.len_field(1, b"net") + huge_layer)
    with pytest.raises(TruncatedError) as e:
        caffe.open(path)
    assert e.value.array == "big" and e.value.offset == 5
    # a blob claiming more float bytes than its layer holds
    blob = MK.len_field(7, MK.len_field(1, MK.varint(4))) + MK.key(5, 2) + MK.varint(1 << 40) + b"\0" * 16
    layer = MK.len_field(1, b"L") + MK.len_field(7, blob)
    path.write_bytes(MK.len_field(100, layer))
    with pytest.raises(TruncatedError):
        caffe.open(path)


def test_non_protobuf_and_empty_files(tmp_path):
    text = tmp_path / "notes.caffemodel"
    text.write_bytes(b"this is certainly not a caffe model, just some words\n" * 4)
    with pytest.raises(FormatError):
        caffe.open(text)
    empty = tmp_path / "empty.caffemodel"
    empty.write_bytes(b"")
    with pytest.raises(FormatError, match="no layers"):
        caffe.open(empty)
    solver = tmp_path / "solver.caffemodel"  # valid protobuf, but a SolverParameter
    solver.write_bytes(MK.len_field(24, b"train_val.prototxt") + MK.key(5, 5) + struct.pack("<f", 0.01)
                       + MK.key(7, 0) + MK.varint(450000))
    with pytest.raises(FormatError, match="no layers"):
        caffe.open(solver)


def test_bad_prototxt_is_reported_with_its_line(tmp_path):
    bad = tmp_path / "bad.prototxt"
    bad.write_text('name: "x"\nlayer {\n  name: "conv1"\n  type: "Convolution"\n')
    with pytest.raises(FormatError, match="missing '}'") as e:
        caffe.open(FIX / "mtcnn_pnet/det1.caffemodel", prototxt=bad)
    assert e.value.file == str(bad)
    bad.write_text('layer { name: "c" type: "Convolution" convolution_param { num_output: "ten" } }')
    with pytest.raises(FormatError, match="num_output"):
        caffe.open(FIX / "mtcnn_pnet/det1.caffemodel", prototxt=bad)
    with pytest.raises(ConvertersError, match="not found"):
        caffe.open(FIX / "mtcnn_pnet/det1.caffemodel", prototxt=tmp_path / "missing.prototxt")


# -------------------------------------------------------------------------------------- sniff

def test_sniff(tmp_path):
    for rel in ALL_FIXTURES:
        path = FIX / rel
        renamed = tmp_path / "model.bin"
        renamed.write_bytes(path.read_bytes()[:64])
        assert caffe.sniff(path, path.read_bytes()[:64])
        assert caffe.sniff(renamed, renamed.read_bytes()), rel  # by structure, not by name
    assert not caffe.sniff("x.onnx", b"\x08\x07\x12\x07pytorch\x1a\x032.1")  # ModelProto: ir_version
    assert not caffe.sniff("g.pb", b"\x0a\x1d\x0a\x05input\x12\x0bPlaceholder")  # GraphDef node
    assert not caffe.sniff("x.bin", b"hello world")
    assert not caffe.sniff("x.bin", b"")


# ------------------------------------------------------------------------- prototxt text format

def test_prototxt_parser_covers_text_format():
    doc = _prototxt.parse("""
        # comment
        name: 'a\\'b' "c"   # adjacent strings join
        input_dim: 1 input_dim: 0x10
        layer < name: "p" pooling_param: { pool: MAX kernel_size: 3 } >
        values: [1, 2.5f, -inf]
        flag: true; other: 1e-3,
        nested { inner { x: -4 } }
    """)
    assert doc.get("name") == "a'bc"
    assert doc.all("input_dim") == [1, 16]
    layer = doc.get("layer")
    assert layer.get("name") == "p" and layer.get("pooling_param").get("pool") == "MAX"
    assert isinstance(layer.get("pooling_param").get("pool"), _prototxt.Ident)
    assert doc.all("values") == [1, 2.5, float("-inf")]
    assert doc.get("other") == pytest.approx(1e-3)
    assert doc.get("nested").to_dict() == {"inner": {"x": -4}}
    with pytest.raises(FormatError, match="line 2 column 6"):
        _prototxt.parse('a: 1\nb: 2 ) ')


def test_v1_prototxt_enum_types(tmp_path):
    proto = tmp_path / "v1.prototxt"
    proto.write_text('input: "data"\ninput_dim: 1 input_dim: 1 input_dim: 8 input_dim: 8\n'
                     'layers { name: "conv1" type: CONVOLUTION bottom: "data" top: "conv1"\n'
                     '  convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }\n'
                     'layers { name: "ip1" type: INNER_PRODUCT bottom: "conv1" top: "ip1" }\n')
    with caffe.open(FIX / "v1_layers.caffemodel", prototxt=proto) as f:
        assert [(k, layer.type) for k, layer in f.layers.items()] == [("conv1", "Convolution"), ("ip1", "InnerProduct")]
        assert f.layers["conv1"].arrays == ["conv1/0", "conv1/1"]
        assert {d["name"] for d in f.meta["layers_not_in_prototxt"]} == {"relu1", "pool1", "prob"}


# ---------------------------------------------------------- the vectorised open (_caffe_fast)

def _snapshot(path, **options):
    """Everything an opened file tells: names, shapes, dtypes, bytes, array meta, layers, file meta."""
    with caffe.open(path, **options) as f:
        arrays = {k: (h.shape, str(h.dtype), h.numpy().tobytes(), h.meta) for k, h in f.items()}
        return arrays, {k: vars(v) for k, v in f.layers.items()}, f.meta


def _outcome(path, **options):
    try:
        return _snapshot(path, **options)
    except ConvertersError as e:
        return type(e).__name__, str(e)


def _both(path, monkeypatch, **options):
    """(fast, walked): the outcomes of opening `path` with and without the vectorised open."""
    fast = _outcome(path, **options)
    monkeypatch.setattr(caffe, "FAST", False)
    walked = _outcome(path, **options)
    monkeypatch.setattr(caffe, "FAST", True)
    return fast, walked


def _fast_taken(path) -> bool:
    from converters.readers import _caffe_fast

    view = FileView(path)
    try:
        return _caffe_fast.open_fast(view, caffe._headers(view)) is not None
    finally:
        view.close()


@pytest.mark.parametrize("rel", ALL_FIXTURES)
def test_fast_open_gives_what_the_walk_gives(rel, monkeypatch):
    fast, walked = _both(FIX / rel, monkeypatch, prototxt=False)
    assert fast == walked


def test_fast_open_is_taken_where_it_applies():
    taken = {rel for rel in ALL_FIXTURES if _fast_taken(FIX / rel)}
    assert taken == set(ALL_FIXTURES) - {"fork_unknown.caffemodel"}  # (its non-packed floats: the walk)


def _many_blobs(path, n=300):
    """A net of n InnerProduct layers as bench_formats.py builds them (packed dims and data)."""
    parts = [MK.len_field(1, b"many")]
    rng = np.random.default_rng(0)
    for i in range(n):
        blobs = b""
        for shape in ((16, 16), (64,)):
            arr = rng.standard_normal(shape).astype("<f4")
            dims = b"".join(MK.varint(d) for d in shape)
            blobs += MK.len_field(7, MK.len_field(7, MK.len_field(1, dims)) + MK.len_field(5, arr.tobytes()))
        layer = (MK.len_field(1, f"ip{i}".encode()) + MK.len_field(2, b"InnerProduct") + MK.len_field(3, b"data")
                 + MK.len_field(4, f"ip{i}".encode()) + MK.len_field(117, MK.key(1, 0) + MK.varint(16)) + blobs)
        parts.append(MK.len_field(100, layer))
    path.write_bytes(b"".join(parts))
    return path


def test_fast_open_of_many_blobs_matches_protobuf_and_the_walk(pb, tmp_path, monkeypatch):
    path = _many_blobs(tmp_path / "many.caffemodel")
    assert _fast_taken(path)
    fast, walked = _both(path, monkeypatch)
    assert fast == walked
    ref = reference_blobs(pb, path)
    with caffe.open(path) as f:
        assert list(f) == list(ref)
        for name, expected in ref.items():
            assert_bit_equal(f[name].numpy(), expected, name)
        h = f["ip7/0"]
        view, a, b = h.numpy(copy=False), h.numpy(), h.numpy()
        assert not view.flags.writeable and a.flags.writeable and a.flags.owndata
        assert not np.shares_memory(a, b) and not np.shares_memory(a, view)
        assert f["ip3/1"].meta["role"] == "bias" and f["ip3/0"].meta["layout"] == "OI"
        assert f.layers["ip3"].params["inner_product_param"]["num_output"] == 16


def test_fast_open_file_cut_short_after_opening(tmp_path):
    import os

    path = _many_blobs(tmp_path / "many.caffemodel", n=50)
    with caffe.open(path) as f:
        first, last = f["ip0/0"], f["ip49/1"]
        first.numpy()
        os.truncate(path, path.stat().st_size - 100)
        with pytest.raises(TruncatedError) as e:
            last.numpy()
        assert e.value.array == "ip49/1" and e.value.file == str(path) and "while open" in str(e.value)


@pytest.mark.parametrize("rel", ALL_FIXTURES + ["many"])
def test_fast_open_of_mutants_gives_what_the_walk_gives(rel, tmp_path, monkeypatch):
    src = _many_blobs(tmp_path / "src.caffemodel", n=20) if rel == "many" else FIX / rel
    data = bytearray(src.read_bytes())
    rng = np.random.default_rng(12)
    for k in range(40):
        bad = bytearray(data)
        for pos in rng.integers(0, len(bad), size=int(rng.integers(1, 4))).tolist():
            bad[pos] = int(rng.integers(0, 256))
        path = tmp_path / f"m{k}.caffemodel"
        path.write_bytes(bytes(bad[:len(bad) - int(rng.integers(0, 3)) * int(rng.integers(0, 40))]))
        fast, walked = _both(path, monkeypatch, prototxt=False)
        assert fast == walked, (rel, k)


@pytest.mark.parametrize("dims, values", [
    ((300, 2), 600), ((), 1), ((0, 2 ** 27, 2 ** 27, 2 ** 27), 0), ((2, 3), 5), ((2 ** 30, 0), 0),
    ((1,) * 9, 1), ((2 ** 40,), 0), (None, 7)])
def test_fast_open_of_odd_shapes_gives_what_the_walk_gives(dims, values, tmp_path, monkeypatch):
    """Multi-byte dims, a scalar, zero dims beside huge ones, a mismatch, ranks past 8, no shape."""
    shape = b"" if dims is None else MK.len_field(7, MK.len_field(1, b"".join(MK.varint(d) for d in dims)))
    blob = MK.len_field(7, shape + MK.len_field(5, np.arange(values, dtype="<f4").tobytes()))
    layer = MK.len_field(1, b"odd") + MK.len_field(2, b"InnerProduct") + blob
    path = tmp_path / "odd.caffemodel"
    path.write_bytes(MK.len_field(1, b"n") + MK.len_field(100, layer))
    fast, walked = _both(path, monkeypatch)
    assert fast == walked


def test_fast_open_meta_and_layers_after_close(tmp_path, monkeypatch):
    """Meta and layers are the walk's, built on first access: after close it reopens the file,
    and refuses one that changed on disk meanwhile."""
    path = _many_blobs(tmp_path / "many.caffemodel", n=5)
    walked = _both(path, monkeypatch)[1]
    with caffe.open(path) as f:
        pass
    assert {k: h.meta for k, h in f.items()} == {k: v[3] for k, v in walked[0].items()}
    assert {k: vars(v) for k, v in f.layers.items()} == walked[1]
    with caffe.open(path) as g:
        pass
    path.write_bytes(path.read_bytes() + b"\x0a\x01x")
    with pytest.raises(FormatError, match="changed on disk"):
        _ = g["ip0/0"].meta


def test_fast_open_of_layers_named_twice_and_odd_fields(tmp_path, monkeypatch):
    """A second name field (the last wins), a name of the wrong wire type (an unknown field), a
    param message with nested, packed and unknown fields, a V2 and a V1 layer in one file."""
    payload = MK.len_field(7, MK.len_field(1, MK.varint(2))) + MK.len_field(5, bytes(8))
    blob = MK.len_field(7, payload)
    conv = (MK.len_field(4, MK.varint(3) + MK.varint(1)) + MK.len_field(7, MK.len_field(1, b"xavier"))
            + MK.key(99, 0) + MK.varint(5) + MK.key(1, 0) + MK.varint(8))
    v2 = (MK.len_field(1, b"first") + MK.len_field(1, b"conv") + MK.key(1, 0) + MK.varint(3)
          + MK.len_field(2, b"Convolution") + MK.len_field(106, conv) + MK.key(10, 0) + MK.varint(1) + blob)
    v1 = MK.len_field(4, b"old") + MK.key(5, 0) + MK.varint(14) + MK.len_field(6, payload)
    path = tmp_path / "odd.caffemodel"
    path.write_bytes(MK.len_field(1, b"n") + MK.len_field(100, v2) + MK.len_field(2, v1))
    assert _fast_taken(path)
    fast, walked = _both(path, monkeypatch)
    assert fast == walked
    assert list(fast[0]) == ["conv/0", "old/0"] and "convolution_param.99" in fast[2]["unknown_layer_fields"]


def test_small_reads_in_any_order_and_from_threads(tmp_path):
    """SmallReads' shared window: reverse order, repeats, V1 layers (listed after V2 ones but
    earlier in the file) and several threads all give the protobuf-exact bytes."""
    import concurrent.futures

    path = _many_blobs(tmp_path / "many.caffemodel", n=200)
    data = path.read_bytes()
    v1 = MK.len_field(4, b"old") + MK.key(5, 0) + MK.varint(14) + MK.len_field(
        6, MK.len_field(7, MK.len_field(1, MK.varint(3))) + MK.len_field(5, np.arange(3, dtype="<f4").tobytes()))
    mixed = tmp_path / "mixed.caffemodel"
    mixed.write_bytes(MK.len_field(2, v1) + data)
    for p in (path, mixed):
        with caffe.open(p, prototxt=False) as f:
            assert _fast_taken(p)
            expected = {k: h.numpy(copy=False).copy() for k, h in f.items()}
            for k in list(f)[::-1] + list(f) + list(f)[::7]:
                assert_bit_equal(f[k].numpy(), expected[k], k)
            with concurrent.futures.ThreadPoolExecutor(4) as pool:
                for k, got in zip(list(f) * 3, pool.map(lambda h: h.numpy(), list(f.values()) * 3)):
                    assert_bit_equal(got, expected[k], k)


# ------------------------------------------------------------------- files cut short while open

_CUT_WHILE_OPEN = r"""
import hashlib, json, os, sys
sys.path.insert(0, os.getcwd())
import converters
from converters.errors import TruncatedError

def outcome(get):
    try:
        value = get()
    except TruncatedError as e:
        return {"file": e.file, "array": e.array}
    return hashlib.sha1(value.tobytes()).hexdigest() if hasattr(value, "tobytes") else "read"

path, cut = sys.argv[1], int(sys.argv[2])
with converters.read(path) as f:
    os.truncate(path, cut)
    out = {"layers": outcome(lambda: f.layers), "meta": {h.name: outcome(lambda h=h: h.meta) for h in f.values()},
           "numpy": {h.name: outcome(h.numpy) for h in f.values()}}
print(json.dumps(out))
"""


@pytest.mark.parametrize("with_prototxt", [False, True])
def test_cut_short_while_open(tmp_path, with_prototxt):
    """The real MTCNN PNet caffemodel cut in half under the open reader, in a child (a read
    through the map would kill it with SIGBUS). Fast open: the layers and meta, worked out on
    first access by the walk, are a TruncatedError naming the file (and the array asked for);
    every blob still whole reads as before, the others are a TruncatedError naming file and blob."""
    import hashlib
    import json
    import subprocess
    import sys

    path = tmp_path / "det1.caffemodel"
    shutil.copy(FIX / "mtcnn_pnet/det1.caffemodel", path)
    if with_prototxt:
        shutil.copy(FIX / "mtcnn_pnet/det1.prototxt", tmp_path / "det1.prototxt")
    cut = path.stat().st_size // 2
    with caffe.open(path) as f:
        assert {type(h).__name__ for h in f.values()} == {"FileArray" if with_prototxt else "WindowArray"}
        before = {k: hashlib.sha1(h.numpy().tobytes()).hexdigest() for k, h in f.items()}
        ends = {k: s.offset + s.nbytes for k, h in f.items() if (s := h.stored_span()) is not None}
    assert sorted(ends) == sorted(before) and min(ends.values()) < cut < max(ends.values())
    r = subprocess.run([sys.executable, "-c", _CUT_WHILE_OPEN, str(path), str(cut)], capture_output=True, text=True,
                       timeout=120, cwd=ROOT)
    assert r.returncode == 0, f"the child died with status {r.returncode} (-7: SIGBUS): {r.stderr[-3000:]}"
    got = json.loads(r.stdout.splitlines()[-1])
    if with_prototxt:  # walked at open: nothing left to read from the file
        assert got["layers"] == "read" and set(got["meta"].values()) == {"read"}
    else:
        assert got["layers"] == {"file": str(path), "array": None}
        assert got["meta"] == {k: {"file": str(path), "array": k} for k in before}
    for k, end in ends.items():
        assert got["numpy"][k] == (before[k] if end <= cut else {"file": str(path), "array": k}), k


_CUT_WHILE_OPENING = r"""
import json, os, sys
sys.path.insert(0, os.getcwd())
from converters.errors import TruncatedError
from converters.readers import _binary, caffe

path, cut = sys.argv[1], int(sys.argv[2])

class CutOnceOpened(_binary.FileView):
    # the file cut short right after the reader opened and mapped it, before anything was read
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        os.truncate(path, cut)

caffe.FileView = CutOnceOpened
try:
    caffe.open(path)
    out = "opened"
except TruncatedError as e:
    out = {"file": e.file, "array": e.array, "message": e.message}
print(json.dumps(out))
"""


@pytest.mark.parametrize("with_prototxt", [False, True])
@pytest.mark.parametrize("where", ["first_layer", "half", "last_byte"])
def test_cut_short_while_opening(tmp_path, with_prototxt, where):
    """The real MTCNN PNet caffemodel (28 KB: walked in one pread copy, fast open or prototxt walk)
    cut short once opened and mapped but before its messages were walked, in a child: a
    TruncatedError naming the file, never a SIGBUS (walking the map past the new end) nor, cut
    inside the last page (where the map reads zeros), a model made of zeros."""
    import json
    import subprocess
    import sys

    path = tmp_path / "det1.caffemodel"
    shutil.copy(FIX / "mtcnn_pnet/det1.caffemodel", path)
    if with_prototxt:
        shutil.copy(FIX / "mtcnn_pnet/det1.prototxt", tmp_path / "det1.prototxt")
    size = path.stat().st_size
    cut = {"first_layer": 40, "half": size // 2, "last_byte": size - 1}[where]
    r = subprocess.run([sys.executable, "-c", _CUT_WHILE_OPENING, str(path), str(cut)], capture_output=True,
                       text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, f"the child died with status {r.returncode} (-7: SIGBUS): {r.stderr[-3000:]}"
    got = json.loads(r.stdout.splitlines()[-1])
    assert isinstance(got, dict), got
    assert got["file"] == str(path) and f"the file now has {cut}" in got["message"]


@pytest.mark.skipif(not RES10_MODEL.exists(), reason="real res10 SSD model not in fixtures/caffe/res10_ssd")
def test_big_file_cut_short_while_opening(tmp_path):
    """The real res10 SSD caffemodel (10.7 MB: over WALK_MAP_MAX, its headers walked in pread
    blocks) cut to half once opened, in a child: not the malformed-file FormatError its short
    reads give, but a TruncatedError naming the file and both sizes."""
    import json
    import subprocess
    import sys

    path = tmp_path / "res10.caffemodel"
    shutil.copy(RES10_MODEL, path)
    size = path.stat().st_size
    assert size > _binary.WALK_MAP_MAX
    r = subprocess.run([sys.executable, "-c", _CUT_WHILE_OPENING, str(path), str(size // 2)], capture_output=True,
                       text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, f"the child died with status {r.returncode} (-7: SIGBUS): {r.stderr[-3000:]}"
    got = json.loads(r.stdout.splitlines()[-1])
    assert got["file"] == str(path) and f"now has {size // 2} bytes (it was {size} when opened)" in got["message"]


def test_non_packed_blob_cut_short_while_open(tmp_path):
    """fork_unknown's `old/0` holds one key per float (old writers), read with pread run by run:
    cut inside its run (the file's one page: the map would have read zeros), it is a TruncatedError."""
    from test_reader_binary import _check_cut

    path = tmp_path / "fork.caffemodel"
    shutil.copy(FIX / "fork_unknown.caffemodel", path)
    with caffe.open(path) as f:
        assert f["old/0"].stored_span() is None and f["old/0"].meta["offset"] > f["fancy/0"].meta["offset"]
        cut = f["old/0"].meta["offset"] + 12
    got = _check_cut(path, cut=cut, whole_pages=False)
    assert got["old/0"] == {"file": str(path), "array": "old/0"} and isinstance(got["conv/0"], str)
