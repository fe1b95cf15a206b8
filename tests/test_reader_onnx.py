"""[onnx] reader against onnx's own loader (onnx.load + numpy_helper.to_array), bit for bit."""
from __future__ import annotations

import shutil
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from converters import read  # noqa: E402
from converters.errors import FormatError, TruncatedError, UnsupportedError  # noqa: E402
from converters.readers import onnx_files  # noqa: E402

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "onnx"
PPOCR = FIX / "ch_ppocr_mobile_v2.0_cls_infer.onnx"
ALL = ["small_cnn.onnx", "small_cnn_fp16.onnx", "small_cnn_external.onnx", "typed_fields.onnx", PPOCR.name]


def reference(path) -> dict[str, np.ndarray]:
    """Every initializer and Constant tensor of the model and its subgraphs, as onnx decodes them."""
    model = onnx.load(str(path))  # loads external data from the model's folder
    out = {}

    def walk(graph):
        for t in graph.initializer:
            out[t.name] = numpy_helper.to_array(t)
        for node in graph.node:
            for a in node.attribute:
                if node.op_type == "Constant":
                    if a.name == "value":
                        out[node.output[0]] = numpy_helper.to_array(a.t)
                    elif a.name == "value_float":
                        out[node.output[0]] = np.array(a.f, dtype=np.float32)
                    elif a.name == "value_floats":
                        out[node.output[0]] = np.array(a.floats, dtype=np.float32)
                    elif a.name == "value_ints":
                        out[node.output[0]] = np.array(a.ints, dtype=np.int64)
                for g in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                    walk(g)
    walk(model.graph)
    return out


def same(a: np.ndarray, b: np.ndarray) -> bool:
    if a.dtype == object or b.dtype == object:
        return a.shape == b.shape and a.tolist() == b.tolist()
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


@pytest.mark.parametrize("name", ALL)
def test_every_array_matches_onnx_bit_exactly(name):
    ref = reference(FIX / name)
    with read(FIX / name, "onnx") as f:
        assert sorted(f) == sorted(ref)
        for key, expected in ref.items():
            got = f[key].numpy()
            assert f[key].shape == expected.shape and f[key].dtype == expected.dtype, key
            assert same(got, expected), key


def test_paddle_model_constants_and_meta():
    with read(PPOCR, "onnx") as f:
        assert len(f) == 308  # 308 Constant nodes, no initializers
        assert {a.meta["source"] for a in f.values()} == {"constant"}
        w = f["conv1_weights"]
        assert w.shape == (8, 3, 3, 3) and w.layout == "OIHW" and w.role == "weight"
        assert w.layer == "Conv@0" and w.meta["layer_type"] == "Conv" and w.meta["index"] == 1
        bn = {k: f[f"conv1_bn_{k}"].role for k in ("scale", "offset", "mean", "variance")}
        assert bn == {"scale": "weight", "offset": "bias", "mean": "running_mean", "variance": "running_var"}
        assert f["fc_0.w_0"].layout == "IO" and f["fc_0.w_0"].layer == "MatMul@0"
        assert f["fc_0.b_0"].role == "bias"  # Add after a MatMul
        assert f["conv2_se_1_offset"].role == "bias"  # reshaped before its Add: named by Paddle's suffix
        assert f["Constant@4"].role == "constant" and f["Constant@4"].dtype == np.int64
        assert f.meta["producer_name"] == "PaddlePaddle" and f.meta["ir_version"] == 7
        assert f.meta["opset_import"] == {"ai.onnx": 11}
        assert f.meta["graph"]["inputs"] == [{"name": "x", "dtype": "float32", "shape": [-1, 3, "?", "?"]}]
        conv = f.layers["Conv@0"]
        assert conv.type == "Conv" and conv.inputs == ["x", "conv1_weights"] and conv.arrays == ["conv1_weights"]
        assert conv.params["group"] == 1 and conv.params["kernel_shape"] == [3, 3]
        model = onnx.load(str(PPOCR))
        for node in model.graph.node:  # attributes as onnx decodes them (float32 exact)
            if node.op_type in ("BatchNormalization", "HardSigmoid", "Conv"):
                for a in node.attribute:
                    want = helper.get_attribute_value(a)
                    got = f.layers[node.name].params[a.name]
                    assert np.array_equal(np.float32(got), np.float32(want)), (node.name, a.name)
        assert f.layers["BatchNormalization@0"].params["epsilon"] == 1e-05


def test_torch_export_roles_layouts_and_folding():
    with read(FIX / "small_cnn.onnx", "onnx") as f:
        # the exporter folds BatchNorm2d into the preceding conv (eval mode): new names, no bn1.*
        assert not any(k.startswith("bn1.") for k in f)
        folded = [k for k in f if f[k].layer == "/conv1/Conv"]
        assert [f[k].role for k in folded] == ["weight", "bias"] and f[folded[0]].layout == "OIHW"
        # BatchNorm1d after a Linear is kept
        assert [f[f"bn2.{k}"].role for k in ("weight", "bias", "running_mean", "running_var")] == [
            "weight", "bias", "running_mean", "running_var"]
        assert f["fc1.weight"].layout == "OI" and f["fc1.weight"].meta["layer_type"] == "Gemm"
        assert f["fc1.bias"].role == "bias" and f["conv2.weight"].layout == "OIHW"
        assert all(a.meta["source"] == "initializer" for a in f.values())
        assert f.meta["graph"]["inputs"] == [{"name": "image", "dtype": "float32", "shape": ["batch", 3, 8, 8]}]
        assert f.meta["graph"]["outputs"][0]["shape"] == ["batch", 5]
        assert f.meta["producer_name"] == "pytorch" and f.meta["opset_import"]["ai.onnx"] == 13
        assert f.layers["/fc2/Gemm"].params["transB"] == 1


def test_fp16_model():
    with read(FIX / "small_cnn_fp16.onnx", "onnx") as f:
        assert {a.dtype for a in f.values()} == {np.dtype(np.float16)}


def test_typed_fields_meta_and_subgraphs():
    with read(FIX / "typed_fields.onnx", "onnx") as f:
        assert f["f32_float_data"].layout == "IO" and f["f32_float_data"].layer == "matmul"
        assert f["f32_raw_data"].layout == "IO"  # Gemm transB=0
        c = f["c_tensor"]
        assert c.meta["source"] == "constant" and c.role == "bias" and c.layer == "gemm"
        assert f["c_value_float"].shape == () and f["c_value_float"].numpy() == np.float32(0.125)
        assert f["then_init"].meta["subgraph_of"] == "branch"
        assert f["bf16_int32_data"].dtype.name == "bfloat16"
        assert f["str_string_data"].numpy().tolist() == ["hello", "h\u00e9llo \u2603"]
        assert f["empty_raw"].shape == (0, 3)
    with read(FIX / "typed_fields.onnx", "onnx", subgraphs=False) as f:
        assert "then_init" not in f and "else_out" not in f and "c_tensor" in f


def test_raw_and_packed_data_are_memory_map_views():
    with read(FIX / "small_cnn.onnx", "onnx") as f:
        view = f["fc1.weight"].numpy(copy=False)
        assert not view.flags.owndata and not view.flags.writeable
    with read(PPOCR, "onnx") as f:  # packed float_data is mapped too
        assert not f["conv1_weights"].numpy(copy=False).flags.owndata


def test_external_data_is_mapped_from_the_side_file(tmp_path):
    for n in ("small_cnn_external.onnx", "small_cnn_external.data"):
        shutil.copy(FIX / n, tmp_path / n)
    with read(tmp_path / "small_cnn_external.onnx", "onnx") as f:
        assert f["fc1.weight"].meta["storage"] == "external"
        assert same(f["fc1.weight"].numpy(), reference(FIX / "small_cnn.onnx")["fc1.weight"])
    (tmp_path / "small_cnn_external.data").unlink()
    with pytest.raises(FormatError) as e:
        read(tmp_path / "small_cnn_external.onnx", "onnx")
    assert "small_cnn_external.data" in str(e.value) and "small_cnn_external.onnx" in str(e.value)


def _model_with_external(tmp_path, location, offset="0", length=None):
    t = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[4], data_location=TensorProto.EXTERNAL)
    for k, v in (("location", location), ("offset", offset), ("length", length)):
        if v is not None:
            t.external_data.add(key=k, value=v)
    g = helper.make_graph([], "g", [], [], initializer=[t])
    path = tmp_path / "m" / "model.onnx"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(helper.make_model(g).SerializeToString())
    return path


def test_external_data_bounds_and_escapes(tmp_path):
    path = _model_with_external(tmp_path, "w.bin", offset="8")
    (path.parent / "w.bin").write_bytes(b"\0" * 20)  # 8 + 16 bytes needed
    with pytest.raises(TruncatedError, match="w.bin") as e:
        read(path, "onnx")
    assert e.value.array == "w"
    path = _model_with_external(tmp_path, "w.bin", length="12")
    with pytest.raises(FormatError, match="length 12"):
        read(path, "onnx")
    (tmp_path / "outside.bin").write_bytes(b"\0" * 16)
    path = _model_with_external(tmp_path, "../outside.bin")
    with pytest.raises(FormatError, match="outside the model's directory"):
        read(path, "onnx")
    assert read(path, "onnx", allow_outside=True)["w"].numpy().tolist() == [0, 0, 0, 0]
    path = _model_with_external(tmp_path, str(tmp_path / "outside.bin"))
    with pytest.raises(FormatError, match="absolute path"):
        read(path, "onnx")


def _save(tmp_path, tensor, name="bad.onnx"):
    g = helper.make_graph([], "g", [], [], initializer=[tensor])
    p = tmp_path / name
    p.write_bytes(helper.make_model(g).SerializeToString())
    return p


def test_raw_data_length_must_match_dims(tmp_path):
    t = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[10], raw_data=b"\0" * 8)
    with pytest.raises(FormatError, match="raw_data holds 8 bytes") as e:
        read(_save(tmp_path, t), "onnx")
    assert e.value.array == "w" and e.value.offset is not None and "bad.onnx" in str(e.value)


def test_dims_larger_than_the_file_fail_before_allocation(tmp_path):
    t = TensorProto(name="huge", data_type=TensorProto.FLOAT, dims=[1 << 20, 1 << 20], raw_data=b"\0" * 16)
    with pytest.raises(FormatError, match="raw_data holds 16 bytes"):
        read(_save(tmp_path, t), "onnx")
    t = TensorProto(name="huge", data_type=TensorProto.FLOAT, dims=[1 << 20, 1 << 20], float_data=[1.0, 2.0])
    tracemalloc.start()
    with pytest.raises(FormatError, match="float_data holds 2 values"):
        read(_save(tmp_path, t), "onnx")
    assert tracemalloc.get_traced_memory()[1] < 10 << 20
    tracemalloc.stop()
    t = TensorProto(name="ints", data_type=TensorProto.INT64, dims=[1 << 30], int64_data=[1, 2, 3])
    with read(_save(tmp_path, t), "onnx") as f:  # varint fields are counted when decoded
        with pytest.raises(FormatError, match="int64_data holds 3 values"):
            f["ints"].numpy()


def test_unknown_data_type(tmp_path):
    t = TensorProto(name="w", dims=[2], raw_data=b"\0" * 8)
    t.data_type = 99
    with pytest.raises(UnsupportedError, match="unknown ONNX data_type 99") as e:
        read(_save(tmp_path, t), "onnx")
    assert e.value.array == "w"
    t = TensorProto(name="q", data_type=TensorProto.INT4, dims=[4], raw_data=b"\0\0")
    with pytest.raises(UnsupportedError, match="sub-byte"):
        read(_save(tmp_path, t), "onnx")


def test_truncated_file(tmp_path):
    data = (FIX / "small_cnn.onnx").read_bytes()
    for cut in (len(data) // 2, len(data) - 3, 40):
        p = tmp_path / f"cut{cut}.onnx"
        p.write_bytes(data[:cut])
        with pytest.raises(FormatError) as e:
            read(p, "onnx")
        assert e.value.file == str(p) and e.value.offset is not None


def test_not_an_onnx_file(tmp_path):
    for content in (b"", b"hello world, not a protobuf\n" * 4, b"\x89PNG\r\n\x1a\n" + bytes(range(256)),
                    b"\x08\x07"):  # ir_version but no graph
        p = tmp_path / "x.onnx"
        p.write_bytes(content)
        with pytest.raises(FormatError):
            read(p, "onnx")


def test_sniff():
    head = (FIX / "small_cnn.onnx").read_bytes()[:64]
    assert onnx_files.sniff("model.bin", head)
    assert onnx_files.sniff("model.onnx", b"")
    assert onnx_files.sniff("m", PPOCR.read_bytes()[:64])
    assert not onnx_files.sniff("model.bin", b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19.")
    assert not onnx_files.sniff("model.pb", b"\n\x0bconv1/weights")
    # a TF SavedModel also starts with field 1 = 1, then a large field 2 message
    assert not onnx_files.sniff("saved_model.pb", b"\x08\x01\x12\xe4\x9a\x01\n\xb2\x03\n\x05serve")
    g = helper.make_graph([], "g", [], [])
    for producer in ("", "pytorch"):
        model = helper.make_model(g, producer_name=producer)
        assert onnx_files.sniff("x", model.SerializeToString()[:64])


def test_unpacked_repeated_fields_decode_like_onnx(tmp_path):
    """proto2 writers may emit repeated numbers one field each instead of packed: both must read."""
    import struct

    def key(field, wire):
        return _varint(field << 3 | wire)
    floats = TensorProto(name="f", data_type=TensorProto.FLOAT, dims=[3]).SerializeToString() + b"".join(
        key(4, 5) + struct.pack("<f", v) for v in (1.5, -2.0, 1e-30))
    ints = TensorProto(name="i", data_type=TensorProto.INT64, dims=[3]).SerializeToString() + b"".join(
        key(7, 0) + _varint(v & (2**64 - 1)) for v in (-1, 2**62, 7))
    graph = b"".join(key(5, 2) + _varint(len(t)) + t for t in (floats, ints))
    model = helper.make_model(helper.make_graph([], "g", [], []))
    model.ClearField("graph")
    p = tmp_path / "unpacked.onnx"
    p.write_bytes(model.SerializeToString() + key(7, 2) + _varint(len(graph)) + graph)
    ref = reference(p)
    with read(p, "onnx") as f:
        assert same(f["f"].numpy(), ref["f"]) and same(f["i"].numpy(), ref["i"])
        assert f["i"].numpy().tolist() == [-1, 2**62, 7]


def _write_sparse_model(path, nbytes: int):
    """A model whose one initializer holds `nbytes` of raw_data, written as a hole (no disk, no RAM)."""
    def key(field, wire):
        return _varint(field << 3 | wire)
    head = TensorProto(name="big", data_type=TensorProto.FLOAT, dims=[nbytes // 4]).SerializeToString()
    tensor_len = len(head) + len(key(9, 2)) + len(_varint(nbytes)) + nbytes
    graph_head = key(5, 2) + _varint(tensor_len)
    graph_tail = helper.make_graph([], "big", [], []).SerializeToString()
    graph_len = len(graph_head) + tensor_len + len(graph_tail)
    model = helper.make_model(helper.make_graph([], "x", [], []))
    model.ClearField("graph")
    with open(path, "wb") as fh:
        fh.write(model.SerializeToString() + key(7, 2) + _varint(graph_len) + graph_head + head + key(9, 2)
                 + _varint(nbytes))
        fh.seek(nbytes, 1)
        fh.write(graph_tail)


def _varint(v: int) -> bytes:
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        out.append(b | (0x80 if v else 0))
        if not v:
            return bytes(out)


def test_one_gigabyte_model_opens_without_reading_weights(tmp_path):
    p = tmp_path / "big.onnx"
    _write_sparse_model(p, 1 << 30)
    tracemalloc.start()
    with read(p, "onnx") as f:
        assert f["big"].shape == (1 << 28,) and f.nbytes == 1 << 30
        view = f["big"].numpy(copy=False)
        assert not view.flags.owndata and view[-1] == 0
        del view
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 5 << 20
