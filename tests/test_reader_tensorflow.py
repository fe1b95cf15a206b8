"""[tensorflow] reader against files written by TensorFlow 2.21 (fixtures/tensorflow/make_fixtures.py).

Every array is compared bit-exactly with TensorFlow's own loader (tf.train.load_checkpoint for
bundles, tf.make_ndarray for GraphDef constants); TensorFlow is imported only inside the tests.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from converters.errors import ConvertersError, FormatError, TruncatedError, UnsupportedError
from converters.readers import _binary
from converters.readers import tensorflow as tfr
from converters.readers._tf_sstable import read_footer

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "tensorflow"
CHECKPOINTS = ["tf2_keras/ckpt-1", "keras3/ckpt-1", "sharded/ckpt-1", "tf1/model.ckpt-7",
               "saved_model/variables/variables"]


@pytest.fixture(scope="module")
def tf():
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return pytest.importorskip("tensorflow")


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


# ------------------------------------------------------------------ bit-exact against TensorFlow

@pytest.mark.parametrize("prefix", CHECKPOINTS)
def test_checkpoint_arrays_match_tensorflow(tf, prefix):
    reader = tf.train.load_checkpoint(str(FIX / prefix))
    dtypes = reader.get_variable_to_dtype_map()
    numeric = {k for k, d in dtypes.items() if d != tf.string}
    with tfr.open(FIX / prefix) as f:
        assert set(f) == numeric
        assert list(f) == sorted(f)  # table (key) order, as tf.train.list_variables
        for key in f:
            assert _same(f[key].numpy(), reader.get_tensor(key)), key
        strings = {k for k, d in dtypes.items() if d == tf.string} - {"_CHECKPOINTABLE_OBJECT_GRAPH"}
        assert set(f.meta.get("string_tensors", {})) == strings


def test_tf1_dtypes_and_partitioned_variable(tf):
    with tfr.open(FIX / "tf1/model.ckpt-7") as f:
        dtypes = {k: str(a.dtype) for k, a in f.items()}
        assert dtypes["half"] == "float16" and dtypes["dbl"] == "float64" and dtypes["flag"] == "bool"
        assert dtypes["counts"] == "int32" and dtypes["bytes8"] == "uint8" and dtypes["global_step"] == "int64"
        part = f["fc/part"]
        assert part.shape == (130, 2) and part.meta["partitioned"] == 2  # second slice starts at 65
        assert f["global_step"].numpy() == 7


def test_sharded_checkpoint_spans_three_shards(tf):
    reader = tf.train.load_checkpoint(str(FIX / "sharded/ckpt-1"))
    with tfr.open(FIX / "sharded/ckpt-1") as f:
        assert f.meta["num_shards"] == 3
        shards = set()
        for a in f.values():
            shards.update([a.meta["shard"]] if isinstance(a.meta["shard"], str) else a.meta["shard"])
        assert len(shards) == 3
        c = f["mod/c/.ATTRIBUTES/VARIABLE_VALUE"]
        assert c.meta["partitioned"] == 3 and len(c.meta["shard"]) == 2
        assert _same(c.numpy(), reader.get_tensor("mod/c/.ATTRIBUTES/VARIABLE_VALUE"))
        assert np.array_equal(c.numpy(), np.arange(40))


def test_frozen_graphdef_consts_match_make_ndarray(tf):
    gd = tf.compat.v1.GraphDef()
    gd.ParseFromString((FIX / "frozen.pb").read_bytes())
    consts = {n.name: tf.make_ndarray(n.attr["value"].tensor) for n in gd.node if n.op == "Const"}
    with tfr.open(FIX / "frozen.pb") as f:
        assert list(f) == list(consts)
        for name, want in consts.items():
            assert _same(f[name].numpy(), want), name
        assert f["half_const"].dtype == np.float16
        assert str(f["bf16_const"].dtype) == "bfloat16"
        assert f["broadcast_const"].numpy().tolist() == [[1, 7, 7], [7, 7, 7]]
        assert f["scalar_const"].shape == () and f["scalar_const"].numpy() == 2.5
        assert f["zeros_const"].numpy().tolist() == [0, 0, 0, 0]
        assert f["int64_const"].numpy().tolist() == [-5, 1 << 40, 1 << 40]
        # tensor_content is mapped in place, at the recorded offset
        conv = f["Conv2D/ReadVariableOp/resource"]
        raw = (FIX / "frozen.pb").read_bytes()[conv.meta["offset"]:conv.meta["offset"] + conv.nbytes]
        assert raw == consts["Conv2D/ReadVariableOp/resource"].tobytes()
        # graph recorded for later steps, consts attributed to their consumers
        assert len(f.layers) == len(gd.node)
        assert f.layers["Conv2D"].type == "Conv2D" and f.layers["Conv2D"].inputs == ["x", "Conv2D/ReadVariableOp"]
        assert f.layers["Conv2D"].params["padding"] == "SAME" and f.layers["Conv2D"].params["strides"] == [1, 1, 1, 1]
        assert (conv.layer, conv.role, conv.layout) == ("Conv2D", "weight", "HWIO")
        dw = f["depthwise/ReadVariableOp/resource"]
        assert (dw.meta["layer_type"], dw.layout) == ("DepthwiseConv2dNative", "HWCM")
        assert f["MatMul/ReadVariableOp/resource"].layout == "IO"
        assert f["BiasAdd/ReadVariableOp/resource"].role == "bias"
        assert f["Mean/reduction_indices"].role == "constant"
        assert f.meta["format"] == "graphdef" and f.meta["version"]["producer"] > 0


# ------------------------------------------------------------------ names, roles, layouts

def test_tf2_keras2_roles_names_layouts():
    with tfr.open(FIX / "tf2_keras") as f:  # a directory with a `checkpoint` state file
        k = "model/layer_with_weights-0/kernel/.ATTRIBUTES/VARIABLE_VALUE"
        m = f[k].meta
        assert (m["role"], m["layout"], m["layer"]) == ("weight", "HWIO", "model/layer_with_weights-0")
        assert m["readable_name"] == "model/layer_with_weights-0/kernel" and m["variable_name"] == "conv2d/kernel"
        dw = f["model/layer_with_weights-1/depthwise_kernel/.ATTRIBUTES/VARIABLE_VALUE"]
        assert (dw.role, dw.layout) == ("weight", "HWCM")
        dense = f["model/layer_with_weights-3/kernel/.ATTRIBUTES/VARIABLE_VALUE"]
        assert dense.layout == "IO" and dense.meta["variable_name"] == "dense/kernel"
        bn = {n.rsplit("/", 3)[-3]: f[n].role for n in f if n.startswith("model/layer_with_weights-2/")
              and ".OPTIMIZER_SLOT" not in n}
        assert bn == {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean",
                      "moving_variance": "running_var"}
        slot = f["model/layer_with_weights-0/kernel/.OPTIMIZER_SLOT/optimizer/m/.ATTRIBUTES/VARIABLE_VALUE"]
        assert slot.role == "optimizer" and slot.meta["slot_of"] == "model/layer_with_weights-0/kernel"
        assert slot.meta["slot_name"] == "m"
        slots = [n for n in f if ".OPTIMIZER_SLOT" in n]
        assert len(slots) == 16 and all(f[n].role == "optimizer" for n in slots)
        assert f["optimizer/iter/.ATTRIBUTES/VARIABLE_VALUE"].role == "counter"
        assert f["optimizer/learning_rate/.ATTRIBUTES/VARIABLE_VALUE"].role == "optimizer"
        assert f["save_counter/.ATTRIBUTES/VARIABLE_VALUE"].role == "counter"
        weights = [n for n in f if f[n].role not in ("optimizer", "counter")]
        assert len(weights) == 10  # conv 2, depthwise 2, batchnorm 4, dense 2


def test_keras3_weights_keyed_under_optimizer_are_still_weights():
    """Keras 3 checkpoints key trainable variables as optimizer/_trainable_variables/N; the object
    graph shows they belong to the model."""
    with tfr.open(FIX / "keras3/ckpt-1") as f:
        kernel = f["optimizer/_trainable_variables/0/.ATTRIBUTES/VARIABLE_VALUE"]
        assert kernel.role == "weight" and kernel.layout == "HWIO"
        assert kernel.meta["variable_name"] == "conv2d/kernel"
        assert kernel.meta["readable_name"] == "model/_operations/1/_kernel"
        dw = f["optimizer/_trainable_variables/2/.ATTRIBUTES/VARIABLE_VALUE"]
        assert dw.layout == "HWCM" and dw.meta["variable_name"] == "depthwise_conv2d/kernel"
        moments = [n for n in f if n.startswith("optimizer/_variables/")]
        assert len(moments) == 16 and all(f[n].role == "optimizer" for n in moments)
        assert f["optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE"].role == "counter"
        assert sum(a.role not in ("optimizer", "counter") for a in f.values()) == 10


def test_names_readable_option():
    with tfr.open(FIX / "keras3/ckpt-1", names="readable") as f:
        a = f["model/_operations/6/_kernel"]
        assert a.meta["checkpoint_key"] == "optimizer/_trainable_variables/6/.ATTRIBUTES/VARIABLE_VALUE"
        assert a.shape == (4, 5) and a.layout == "IO"
    with tfr.open(FIX / "tf2_keras", names="readable") as f:
        assert "model/layer_with_weights-2/moving_mean" in f and "save_counter" in f
    with pytest.raises(FormatError):
        tfr.open(FIX / "tf2_keras", names="bogus")


def test_tf1_roles():
    with tfr.open(FIX / "tf1") as f:
        assert f["global_step"].role == "counter"
        assert f["beta1_power"].role == "optimizer" and f["conv1/weights/Adam_1"].role == "optimizer"
        w = f["conv1/weights"]
        assert (w.role, w.layout, w.layer) == ("weight", "HWIO", "conv1")
        assert f["conv1/biases"].role == "bias" and f["fc/weights"].layout == "IO"


def test_saved_model_directory():
    for p in (FIX / "saved_model", FIX / "saved_model" / "saved_model.pb"):
        with tfr.open(p) as f:
            assert f.meta["saved_model"] is True and f.meta["format"] == "saved_model"
            assert f["w/.ATTRIBUTES/VARIABLE_VALUE"].meta["variable_name"] == "dense/kernel"
            assert f["w/.ATTRIBUTES/VARIABLE_VALUE"].shape == (3, 2)


def test_every_path_spelling_opens_the_same_checkpoint():
    base = FIX / "tf2_keras"
    spellings = [base / "ckpt-1", base / "ckpt-1.index", base, base / "ckpt-1.data-00000-of-00001"]
    keys = [list(tfr.open(p)) for p in spellings]
    assert all(k == keys[0] for k in keys) and len(keys[0]) == 32


def test_sniff():
    for p in [FIX / "tf2_keras", FIX / "tf2_keras/ckpt-1", FIX / "tf2_keras/ckpt-1.index",
              FIX / "saved_model", FIX / "frozen.pb", FIX / "sharded/ckpt-1.data-00002-of-00003"]:
        head = p.read_bytes()[:64] if p.is_file() else b""
        assert tfr.sniff(p, head), p
    script = FIX / "make_fixtures.py"
    assert not tfr.sniff(script, script.read_bytes()[:64])
    fingerprint = FIX / "saved_model" / "fingerprint.pb"
    assert not tfr.sniff(fingerprint, fingerprint.read_bytes()[:64])


def test_opening_reads_no_tensor_data(monkeypatch):
    calls = []
    def counting(original):
        def counted(self, *args, **kwargs):
            calls.append(self.path)
            return original(self, *args, **kwargs)
        return counted
    for accessor in ("array", "read_into"):  # the map view (copy=False) and pread (.numpy())
        monkeypatch.setattr(_binary.FileView, accessor, counting(getattr(_binary.FileView, accessor)))
    for p in ["tf2_keras/ckpt-1", "sharded/ckpt-1", "frozen.pb"]:
        f = tfr.open(FIX / p)
        assert calls == [], p
        first = next(iter(f.values()))
        first.numpy()
        assert calls, p
        calls.clear()
        f.close()


# ------------------------------------------------------------------ bad input

def _copy(tmp_path, prefix="tf2_keras/ckpt-1") -> Path:
    src = FIX / prefix
    for p in src.parent.glob(src.name + ".*"):
        shutil.copy(p, tmp_path / p.name)
    return tmp_path / src.name


def test_truncated_index(tmp_path):
    p = _copy(tmp_path)
    index = Path(str(p) + ".index")
    data = index.read_bytes()
    index.write_bytes(data[:30])
    with pytest.raises(TruncatedError) as e:
        tfr.open(p)
    assert e.value.file == str(index)
    index.write_bytes(data[: len(data) // 2])  # the footer is gone: its magic is not where it should be
    with pytest.raises(FormatError, match="magic") as e:
        tfr.open(p)
    assert e.value.offset == len(data) // 2 - 8


def test_wrong_footer_magic(tmp_path):
    p = _copy(tmp_path)
    index = Path(str(p) + ".index")
    data = bytearray(index.read_bytes())
    data[-1] ^= 0xFF
    index.write_bytes(bytes(data))
    with pytest.raises(FormatError, match="magic") as e:
        tfr.open(p)
    assert e.value.file == str(index) and e.value.offset == len(data) - 8
    assert not tfr.sniff(index, bytes(data[:64]))


def test_compressed_block_is_refused(tmp_path):
    p = _copy(tmp_path)
    index = Path(str(p) + ".index")
    view = _binary.FileView(index)
    _meta, (offset, size) = read_footer(view)
    view.close()
    data = bytearray(index.read_bytes())
    data[offset + size] = 1  # block trailer: compression type snappy
    index.write_bytes(bytes(data))
    with pytest.raises(UnsupportedError, match="compressed") as e:
        tfr.open(p)
    assert e.value.file == str(index) and e.value.offset == offset


def test_truncated_data_shard(tmp_path):
    p = _copy(tmp_path)
    shard = Path(str(p) + ".data-00000-of-00001")
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(TruncatedError) as e:
        tfr.open(p)
    assert e.value.file == str(shard) and e.value.array and e.value.offset is not None
    assert "file has 100" in str(e.value)


def test_missing_shard(tmp_path):
    p = _copy(tmp_path, "sharded/ckpt-1")
    missing = Path(str(p) + ".data-00001-of-00003")
    missing.unlink()
    with pytest.raises(FormatError, match="missing") as e:
        tfr.open(p)
    assert e.value.file == str(missing) and "data-00001-of-00003" in str(e.value)


def test_entry_size_disagreeing_with_shape(tmp_path, tf):
    """A BundleEntryProto whose size is not shape x dtype is refused at open, naming the array."""
    from converters.readers._tf_sstable import block_entries

    p = _copy(tmp_path, "tf1/model.ckpt-7")
    index = Path(str(p) + ".index")
    view = _binary.FileView(index)
    _meta, handle = read_footer(view)
    target = None
    for _k, (vpos, vlen) in block_entries(view, handle, "index"):
        from converters.readers._tf_sstable import _block_handle

        data_handle, _ = _block_handle(view, vpos, vpos + vlen, "h")
        for key, (pos, n) in block_entries(view, data_handle, "data"):
            if key == b"global_step":
                target = (pos, n)
    view.close()
    from tensorflow.core.protobuf import tensor_bundle_pb2

    data = bytearray(index.read_bytes())
    entry = tensor_bundle_pb2.BundleEntryProto.FromString(bytes(data[target[0]:target[0] + target[1]]))
    entry.size = 4  # int64 scalar needs 8; keep the varint one byte so the table layout holds
    new = entry.SerializeToString()
    assert len(new) == target[1]
    data[target[0]:target[0] + target[1]] = new
    index.write_bytes(bytes(data))
    with pytest.raises(FormatError, match="needs 8") as e:
        tfr.open(p)
    assert e.value.array == "global_step"


def test_bad_graphdef_const(tmp_path, tf):
    gd = tf.compat.v1.GraphDef()
    node = gd.node.add()
    node.name, node.op = "w", "Const"
    proto = tf.make_tensor_proto(np.arange(6, dtype=np.float32).reshape(2, 3))
    proto.tensor_shape.dim[0].size = 4000  # claims 12000 floats, holds 6
    node.attr["value"].tensor.CopyFrom(proto)
    p = tmp_path / "bad.pb"
    p.write_bytes(gd.SerializeToString())
    assert tfr.sniff(p, p.read_bytes()[:64])
    with pytest.raises(FormatError, match="tensor_content holds 24 bytes") as e:
        tfr.open(p)
    assert e.value.array == "w" and e.value.offset is not None
    p.write_bytes(gd.SerializeToString()[:40])  # cut inside the tensor
    with pytest.raises(TruncatedError):
        tfr.open(p)


def test_random_file_is_not_tensorflow(tmp_path):
    p = tmp_path / "noise.pb"
    p.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    assert not tfr.sniff(p, p.read_bytes()[:64])
    with pytest.raises(ConvertersError):
        tfr.open(p)
    missing = tmp_path / "nothing"
    with pytest.raises(FormatError, match="no such"):
        tfr.open(missing)
    empty_dir = tmp_path / "d"
    empty_dir.mkdir()
    assert not tfr.sniff(empty_dir, b"")
    with pytest.raises(FormatError, match="no checkpoint"):
        tfr.open(empty_dir)


@pytest.mark.parametrize("prefix,target", [("tf2_keras/ckpt-1", "ckpt-1.index"),
                                           ("tf1/model.ckpt-7", "model.ckpt-7.index")])
def test_corrupted_index_bytes_raise_only_converters_errors(tmp_path, prefix, target):
    """Random byte flips and cuts: either a readable file or a ConvertersError, never another exception."""
    import random

    _copy(tmp_path, prefix)
    path = tmp_path / target
    orig = path.read_bytes()
    rng = random.Random(0)
    for _ in range(150):
        data = bytearray(orig)
        for _ in range(rng.randint(1, 3)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        if rng.random() < 0.2:
            data = data[:rng.randrange(len(data))]
        path.write_bytes(bytes(data))
        try:
            with tfr.open(path) as f:
                for a in f.values():
                    try:
                        a.numpy()
                    except ConvertersError:
                        pass
        except ConvertersError:
            pass


def test_tf1_flat_names_get_roles_and_layers_from_suffixes(tf, tmp_path):
    """A TF1 graph built by hand with flat variable names (`conv_weight`, `bn_moving_var`), saved
    by tf.compat.v1.train.Saver after one Adam step: roles, layers and layouts from the suffixes."""
    v1 = tf.compat.v1
    shapes = {"conv_weight": (3, 3, 3, 8), "conv_bias": (8,), "bn_gamma": (8,), "bn_beta": (8,),
              "bn_moving_mean": (8,), "bn_moving_var": (8,), "fc_weights": (8, 2), "fc_biases": (2,)}
    with tf.Graph().as_default(), v1.Session() as sess:
        rng = np.random.default_rng(0)
        var = {n: v1.get_variable(n, initializer=rng.standard_normal(s).astype(np.float32)) for n, s in shapes.items()}
        step = v1.train.get_or_create_global_step()
        x = tf.nn.conv2d(tf.ones((1, 4, 4, 3)), var["conv_weight"], 1, "SAME") + var["conv_bias"]
        x = tf.nn.batch_normalization(x, var["bn_moving_mean"], var["bn_moving_var"], var["bn_beta"], var["bn_gamma"],
                                      1e-3)
        loss = tf.reduce_sum(tf.matmul(tf.reduce_mean(x, [1, 2]), var["fc_weights"]) + var["fc_biases"])
        train = v1.train.AdamOptimizer(0.1).minimize(loss, global_step=step,
                                                     var_list=[var["conv_weight"], var["fc_biases"]])
        sess.run(v1.global_variables_initializer())
        sess.run(train)
        prefix = v1.train.Saver().save(sess, str(tmp_path / "flat.ckpt"), global_step=step)
    reader = tf.train.load_checkpoint(prefix)
    with tfr.open(prefix) as f:
        for key in f:
            assert _same(f[key].numpy(), reader.get_tensor(key)), key
        expect = {"conv_weight": ("weight", "conv", "HWIO"), "conv_bias": ("bias", "conv", None),
                  "bn_gamma": ("weight", "bn", None), "bn_beta": ("bias", "bn", None),
                  "bn_moving_mean": ("running_mean", "bn", None), "bn_moving_var": ("running_var", "bn", None),
                  "fc_weights": ("weight", "fc", "IO"), "fc_biases": ("bias", "fc", None)}
        for name, (role, layer, layout) in expect.items():
            assert (f[name].role, f[name].layer, f[name].layout) == (role, layer, layout), name
        assert f["conv_weight/Adam"].role == "optimizer" and f["fc_biases/Adam_1"].role == "optimizer"
        assert f["global_step"].role == "counter" and f["beta1_power"].role == "optimizer"


# ------------------------------------------------------------------ the fast open (readers/_tf_fast.py)

def _walked(monkeypatch, path, **options):
    """The file opened by the entry-by-entry walk (the fast open turned off)."""
    with monkeypatch.context() as m:
        m.setattr(tfr, "open_fast", lambda *a, **k: None)
        return tfr.open(path, **options)


@pytest.mark.parametrize("prefix", CHECKPOINTS)
@pytest.mark.parametrize("names", ["keys", "readable"])
def test_fast_open_matches_the_walk(monkeypatch, prefix, names):
    """Names, dtypes, shapes, every meta key, file meta and bytes: the same either way."""
    from converters.readers._tf_fast import BundleArray

    walked = _walked(monkeypatch, FIX / prefix, names=names)
    with tfr.open(FIX / prefix, names=names) as f, walked:
        assert list(f) == list(walked) and f.meta == walked.meta
        for key, a in f.items():
            b = walked[key]
            assert (a.shape, a.dtype, a.meta) == (b.shape, b.dtype, b.meta), key
            assert _same(a.numpy(), b.numpy()) and _same(a.numpy(copy=False), b.numpy()), key
        fast = all(isinstance(a, BundleArray) for a in f.values())
        assert fast == (prefix not in ("tf1/model.ckpt-7", "sharded/ckpt-1"))  # partitioned variables: the walk


def _three_shards(tf):
    """CheckpointOptions putting whole variables round robin over three shards
    (MaxShardSizePolicy would split them)."""
    class ThreeShards(tf.train.experimental.ShardingCallback):
        description = "three shards"

        def __call__(self, shardable_tensors):
            out = [{}, {}, {}]
            for i, t in enumerate(shardable_tensors):
                out[i % 3].setdefault(t.checkpoint_key, {})[t.slice_spec] = t.tensor
            return out
    return tf.train.CheckpointOptions(experimental_sharding_callback=ThreeShards())


def test_fast_open_many_variables_in_chunks(tf, tmp_path, monkeypatch):
    """Hundreds of small variables around a few big ones, read in small chunks: bit-exact against
    TensorFlow; every .numpy() is an array of its own, writeable, and a second call reads afresh."""
    from converters.readers import _tf_fast

    monkeypatch.setattr(_tf_fast, "CHUNK", 3000)
    rng = np.random.default_rng(1)
    variables = {}
    for i in range(300):
        shape = [(16, 16), (64,), (3,), (), (300, 100)][i % 5 if i % 50 else 4]
        dtype = [np.float32, np.float16, np.int64, np.float64][i % 4 if i % 50 else 0]
        variables[f"v{i}"] = tf.Variable(rng.standard_normal(shape).astype(dtype))
    shards = _three_shards(tf)
    prefix = tf.train.Checkpoint(**variables).write(str(tmp_path / "many" / "ckpt"), options=shards)
    reader = tf.train.load_checkpoint(prefix)
    with tfr.open(prefix) as f:
        assert len(f) == 300 and f.meta["num_shards"] > 2
        assert all(isinstance(a, _tf_fast.BundleArray) for a in f.values())
        got = {k: a.numpy() for k, a in f.items()}
        for k, arr in got.items():
            assert _same(arr, reader.get_tensor(k)) and arr.flags.writeable and arr.flags.c_contiguous, k
        first = next(iter(f))
        again = f[first].numpy()
        got[first][...] = 0
        assert _same(again, reader.get_tensor(first)) and not np.shares_memory(again, got[first])
        assert f["v1/.ATTRIBUTES/VARIABLE_VALUE"].meta["readable_name"] == "v1"
        assert f.meta["object_graph"]["nodes"] == 301


def test_fast_open_bad_object_graph_names_file_on_meta(tmp_path, monkeypatch):
    """The object graph is parsed on first .meta: a corrupt one is a FormatError naming the index."""
    from converters.readers import _tf_objects

    def broken(data, file):
        raise FormatError("object graph node 1 refers to node 99 of 3", file=file, array=_tf_objects.OBJECT_GRAPH_KEY)
    from converters.readers import _tf_fast

    monkeypatch.setattr(_tf_fast, "parse_object_graph", broken)
    with tfr.open(FIX / "tf2_keras/ckpt-1") as f:
        a = next(iter(f.values()))
        assert a.numpy().size
        with pytest.raises(FormatError, match="refers to node") as e:
            _ = a.meta
        assert e.value.file.endswith("ckpt-1.index")


def test_fast_open_unaligned_arrays_read_on_their_own(tf, tmp_path):
    """TF packs tensors back to back: an int64 after 3 float16 sits at byte 6. Such arrays are not
    sliced out of a chunk (a misaligned view) but read into an aligned buffer of their own."""
    variables = {"a": tf.Variable(np.ones(3, np.float16)), "b": tf.Variable(np.arange(5, dtype=np.int64)),
                 "c": tf.Variable(np.ones(1, np.int8)), "d": tf.Variable(np.arange(3, dtype=np.float64))}
    prefix = tf.train.Checkpoint(**variables).write(str(tmp_path / "ckpt"))
    reader = tf.train.load_checkpoint(prefix)
    with tfr.open(prefix) as f:
        src = next(iter(f.values()))._src
        chunked = {k.split("/")[0]: src.chunk_of[a._i] >= 0 for k, a in f.items()}
        assert chunked == {"a": True, "b": False, "c": True, "d": False}
        for k, a in f.items():
            arr = a.numpy()
            assert _same(arr, reader.get_tensor(k)) and arr.flags.aligned, k


@pytest.mark.parametrize("prefix", ["tf2_keras/ckpt-1", "keras3/ckpt-1", "saved_model/variables/variables"])
def test_fast_open_stored_spans_are_tensorflows_bytes(tf, prefix):
    """Every variable of a TF2 / Keras checkpoint and a SavedModel's variables bundle has a stored
    span: its bytes, read from the span's own descriptor, are tf.train.load_checkpoint's value
    (C order, little-endian), and its view is the same array."""
    import os

    from converters.readers._tf_fast import BundleArray

    reader = tf.train.load_checkpoint(str(FIX / prefix))
    for names in ("keys", "readable"):
        with tfr.open(FIX / prefix, names=names) as f:
            assert f and all(isinstance(a, BundleArray) for a in f.values())
            for key, a in f.items():
                s = a.stored_span()
                value = reader.get_tensor(a.meta.get("checkpoint_key", key))
                assert (s.shape, s.dtype, s.nbytes) == (value.shape, value.dtype, value.nbytes), key
                assert s.path == str(FIX / prefix) + ".data-00000-of-00001" and s.offset == a.meta["offset"]
                assert os.pread(s.check(key), s.nbytes, s.offset) == np.ascontiguousarray(value).tobytes(), key
                assert _same(s.view(), value), key


def test_fast_open_span_of_a_second_shard(tf, tmp_path):
    """Variables round robin over three shards: each span names its shard and its descriptor."""
    variables = {f"v{i}": tf.Variable(np.arange(i, i + 10, dtype=np.float64)) for i in range(6)}
    prefix = tf.train.Checkpoint(**variables).write(str(tmp_path / "ckpt"), options=_three_shards(tf))
    reader = tf.train.load_checkpoint(prefix)
    with tfr.open(prefix) as f:
        paths = set()
        for key, a in f.items():
            s = a.stored_span()
            paths.add(s.path)
            assert s.path.endswith(a.meta["shard"])
            with open(s.path, "rb") as fh:
                fh.seek(s.offset)
                assert fh.read(s.nbytes) == reader.get_tensor(key).tobytes(), key
        assert len(paths) == 3


KERAS_VARIABLE = (r"model/(?:layer_with_weights-|_functional/_operations/)(?P<n>\d)/_?(?P<v>{})"
                  r"/\.ATTRIBUTES/VARIABLE_VALUE")
"""A Keras model's variables in a TF2 checkpoint: tf_keras names them `layer_with_weights-N`, Keras 3
`_functional/_operations/N` (its kernels `_kernel`)."""
UNCHANGED = "bias|beta|gamma|moving_mean|moving_variance"


def _keras_table(path, kernel_axes) -> Path:
    """Biases and BatchNorm variables unchanged, kernels permuted (`kernel_axes`), training state ignored."""
    path.write_text(f"""source: tensorflow
rules:
  - {{from: '{KERAS_VARIABLE.format(UNCHANGED)}', to: 'layer{{n}}.{{v}}'}}
  - {{from: '{KERAS_VARIABLE.format("kernel")}', to: 'layer{{n}}.{{v}}',
     transforms: [{{permute: {list(kernel_axes)}}}]}}
ignore:
  - {{role: optimizer, reason: the optimizer's slots}}
  - {{role: counter, reason: step counters}}
""")
    return path


def test_unchanged_bundle_variables_are_copied_file_to_file(tf, tmp_path, monkeypatch):
    """A Keras model's TF2 checkpoint converted to .safetensors through a table: the biases and
    BatchNorm variables (no transform) are copied from the data shard as stored spans (no chain
    runs for them), and every output tensor is bit-exact against tf.train.load_checkpoint."""
    import re

    from safetensors.numpy import load_file

    from converters.convert import convert

    model = tf.keras.Sequential([tf.keras.Input((8, 8, 3)), tf.keras.layers.Conv2D(6, 3),
                                 tf.keras.layers.BatchNormalization(), tf.keras.layers.Conv2D(4, 3)])
    for i, v in enumerate(model.weights):
        v.assign(np.random.default_rng(i).standard_normal(v.shape).astype(np.float32))
    prefix = tf.train.Checkpoint(model=model).write(str(tmp_path / "ckpt"))
    reader = tf.train.load_checkpoint(prefix)
    import converters.convert as convert_module

    chains, real_outputs = [], convert_module.outputs

    def outputs(assignment, arrays):  # a rule chain run on the values (the spans skip it)
        chains.extend(assignment.targets)
        return real_outputs(assignment, arrays)
    monkeypatch.setattr(convert_module, "outputs", outputs)
    convert(prefix, _keras_table(tmp_path / "t.yaml", (3, 2, 0, 1)), out=tmp_path / "out.safetensors")
    got = load_file(tmp_path / "out.safetensors")
    expected = {}
    for key in reader.get_variable_to_shape_map():
        if m := re.fullmatch(KERAS_VARIABLE.format(UNCHANGED + "|kernel"), key):
            value = reader.get_tensor(key)
            expected[f"layer{m['n']}.{m['v']}"] = value.transpose(3, 2, 0, 1) if m["v"] == "kernel" else value
    assert len(expected) == 8 and set(got) == set(expected)
    for name, value in expected.items():
        assert _same(got[name], np.ascontiguousarray(value)), name
    assert sorted(chains) == sorted(k for k in expected if k.endswith("kernel"))  # the 6 others: stored spans


# ------------------------------------------------------------------- files cut short while open

def test_graphdef_typed_values_cut_short_while_open(tmp_path):
    """frozen.pb's constants given by typed values (half_val, float_val, int64_val, bool_val: the
    last nodes) are decoded from a pread of their bytes: cut where they start (inside the file's
    one page, where the map would have read zeros), each is a TruncatedError naming file and
    constant; the tensor_content ones before the cut read as before (child process, no SIGBUS)."""
    from test_reader_binary import _check_cut

    path = tmp_path / "frozen.pb"
    shutil.copy(FIX / "frozen.pb", path)
    got = _check_cut(path, cut=path.read_bytes().index(b"half_const"), whole_pages=False)
    refused = {k for k, v in got.items() if isinstance(v, dict)}
    assert refused == {"half_const", "bf16_const", "scalar_const", "broadcast_const", "int64_const", "bool_const"}
    assert isinstance(got["zeros_const"], str)  # no values stored: nothing to read


def test_partitioned_columns_cut_short_while_open(tf, tmp_path):
    """A TF1 variable partitioned along its second axis (tf.compat.v1.fixed_size_partitioner, saved
    by tf.compat.v1.train.Saver): its slices are not contiguous in the whole, read with pread and
    copied in; cut inside the last slice, it is a TruncatedError, the variable before reads as before."""
    from test_reader_binary import _check_cut

    v1 = tf.compat.v1
    with tf.Graph().as_default():
        v1.get_variable("a_whole", shape=(512,), initializer=v1.random_normal_initializer(seed=1))
        v1.get_variable("cols", shape=(2048, 6), partitioner=v1.fixed_size_partitioner(3, axis=1),
                        initializer=v1.random_normal_initializer(seed=2))
        with v1.Session() as s:
            s.run(v1.global_variables_initializer())
            prefix = v1.train.Saver().save(s, str(tmp_path / "model.ckpt"))
    data = Path(prefix + ".data-00000-of-00001")
    with tfr.open(prefix) as f:
        assert f["cols"].meta["partitioned"] == 3 and f["cols"].shape == (2048, 6)
    got = _check_cut(prefix, data_file=data, cut=data.stat().st_size - 3 * 4096)
    assert got["cols"] == {"file": str(data), "array": "cols"} and isinstance(got["a_whole"], str)


def test_bundle_cut_short_while_open(tf, tmp_path):
    """A TF2 checkpoint of small variables (read in shared chunks) and a big one, its data shard
    cut in the middle of a variable under the open reader (child process, no SIGBUS): the
    variables before the cut read as before, even those whose chunk the cut crosses; the others
    are TruncatedErrors naming the shard and the variable."""
    from test_reader_binary import _check_cut

    rng = np.random.default_rng(3)
    variables = {f"b{i}": tf.Variable(rng.standard_normal(3000).astype(np.float32)) for i in range(12)}
    variables["big"] = tf.Variable(rng.standard_normal((300, 100)).astype(np.float32))
    prefix = tf.train.Checkpoint(**variables).write(str(tmp_path / "ckpt"))
    data = Path(prefix + ".data-00000-of-00001")
    got = _check_cut(prefix, data_file=data)
    assert sum(isinstance(v, str) for v in got.values()) >= 3


CONVERT_CUT = r"""
import os, sys
sys.path.insert(0, os.getcwd())
import converters
from converters.convert import convert
from converters.errors import TruncatedError

prefix, table, out, cut = sys.argv[1:5]
arrays = converters.read(prefix)
os.truncate(prefix + ".data-00000-of-00001", int(cut))
try:
    convert(arrays, table, out=out)
except TruncatedError as e:
    print(e.file, e.array, sep="\n")
"""


def test_conversion_of_a_bundle_cut_short_while_open(tf, tmp_path):
    """The data shard cut inside the last bias after the checkpoint was opened: the conversion
    (that bias a file-to-file copy) is a TruncatedError naming the shard and the output tensor, no output;
    in a child, so that a read through the map past the new end would show as its exit status
    (-7: SIGBUS)."""
    import subprocess
    import sys

    table = _keras_table(tmp_path / "t.yaml", (1, 0))
    layers = tf.keras.layers
    model = tf.keras.Sequential([tf.keras.Input((64,)), layers.Dense(2000), layers.BatchNormalization(),
                                 layers.Dense(10)])
    prefix = tf.train.Checkpoint(model=model).write(str(tmp_path / "ckpt"))
    with tfr.open(prefix) as f:
        last = max(f.values(), key=lambda a: a.meta["offset"])
        span = last.stored_span()
        assert last.role == "bias" and span.nbytes == 40
    out = tmp_path / "out.safetensors"
    r = subprocess.run([sys.executable, "-c", CONVERT_CUT, prefix, str(table), str(out), str(span.offset + 20)],
                       capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parents[1])
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split("\n")[-3:-1] == [prefix + ".data-00000-of-00001", "layer3.bias"]  # the writer's name
    assert not out.exists()


_CUT_WHILE_OPENING = r"""
import json, os, sys
sys.path.insert(0, os.getcwd())
from converters.errors import TruncatedError
from converters.readers import _binary, _tf_fast, _tf_graph, tensorflow

path, target, cut = sys.argv[1], sys.argv[2], int(sys.argv[3])

class CutOnceOpened(_binary.FileView):
    # `target` cut short right after the reader opened and mapped it, before anything was read
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.path == target:
            os.truncate(target, cut)

tensorflow.FileView = _tf_fast.FileView = _tf_graph.FileView = CutOnceOpened
try:
    tensorflow.open(path)
    out = "opened"
except TruncatedError as e:
    out = {"file": e.file, "array": e.array}
print(json.dumps(out))
"""


@pytest.mark.parametrize("target", ["index", "object_graph", "graphdef"])
def test_cut_short_while_opening(tf, tmp_path, target):
    """A file cut short once the reader opened and mapped it, before reading it, in a child (a
    walk through the map past the new end would be a SIGBUS, its exit status): the checkpoint's
    .index (500 variables: 25 KB, walked in a pread copy), its data shard where the object graph
    (read while opening, with pread) lies, frozen.pb (walked in a pread copy): a TruncatedError
    naming the file cut."""
    import subprocess
    import sys

    if target == "graphdef":
        path = tmp_path / "frozen.pb"
        shutil.copy(FIX / "frozen.pb", path)
        cut_file, cut = path, 1000
    else:
        variables = {f"variable_with_a_long_name_{i}": tf.Variable(np.full(3, i, np.float32)) for i in range(500)}
        path = Path(tf.train.Checkpoint(**variables).write(str(tmp_path / "ckpt")))
        with tfr.open(path) as f:
            first = min(a.meta["offset"] for a in f.values())
        index, data = Path(f"{path}.index"), Path(f"{path}.data-00000-of-00001")
        assert index.stat().st_size > 3 * 4096
        cut_file, cut = (index, 4096) if target == "index" else (data, first + 12)  # (the graph lies last)
    r = subprocess.run([sys.executable, "-c", _CUT_WHILE_OPENING, str(path), str(cut_file), str(cut)],
                       capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parents[1])
    assert r.returncode == 0, f"the child died with status {r.returncode} (-7: SIGBUS): {r.stderr[-3000:]}"
    got = json.loads(r.stdout.splitlines()[-1])
    assert isinstance(got, dict) and got["file"] == str(cut_file), got
    if target == "object_graph":
        assert got["array"] == "_CHECKPOINTABLE_OBJECT_GRAPH"
