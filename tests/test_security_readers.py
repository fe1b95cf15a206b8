"""Hostile files: no code runs, nothing outside the model is read, no decompression bomb is
inflated, and every parser failure is one ConvertersError (the CLI: one line, exit 2).

Each file is built by the real library (onnx.helper, h5py, zipfile, torch.save, numpy) from the
repository's fixtures, then attacked the way issue #13 describes."""
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from hostile_files import RunsCommand, pth_that_runs_command

import converters
from converters.errors import ConvertersError, FormatError, UnsupportedError
from converters.readers import detect

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "fixtures"
SECRET = b"root:x:0:0:secret-marker-0123456789abcdef\n" * 4


def materialise(path, **options):
    with converters.read(path, **options) as f:
        return {k: h.numpy() for k, h in f.items()}


def never_leaks(arrays):
    return all(SECRET[:32] not in a.tobytes() for a in arrays.values())


# ------------------------------------------------------------------------------------ ONNX

def onnx_with_external(tmp_path, location):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    w = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[len(SECRET) // 4])
    w.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", "0"), ("length", str(len(SECRET)))):
        entry = w.external_data.add()
        entry.key, entry.value = k, v
    graph = helper.make_graph([helper.make_node("Identity", ["w"], ["y"])], "g", [],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    model_dir = tmp_path / "model"
    model_dir.mkdir(exist_ok=True)
    path = model_dir / "m.onnx"
    onnx.save(helper.make_model(graph), path)
    return path


def test_onnx_external_data_outside_the_folder_is_refused(tmp_path):
    (tmp_path / "secret.bin").write_bytes(SECRET)
    path = onnx_with_external(tmp_path, "../secret.bin")
    with pytest.raises(FormatError, match="outside the model's directory"):
        materialise(path)
    assert not never_leaks(materialise(path, allow_outside=True))  # the check is what stopped it


def test_onnx_external_data_through_a_symlink_is_refused(tmp_path):
    (tmp_path / "secret.bin").write_bytes(SECRET)
    path = onnx_with_external(tmp_path, "weights.bin")
    (path.parent / "weights.bin").symlink_to(tmp_path / "secret.bin")
    with pytest.raises(FormatError, match="outside the model's directory"):
        materialise(path)


@pytest.mark.parametrize("location", ["/etc/passwd", "w\0.bin"])
def test_onnx_absolute_or_nul_locations_are_refused(tmp_path, location):
    with pytest.raises(FormatError, match="absolute path|not a file name"):
        materialise(onnx_with_external(tmp_path, location))


# ------------------------------------------------------------------------------------ Keras zip

def test_keras_zip_with_parent_members_extracts_nothing(tmp_path):
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    path = work / "m.keras"
    shutil.copy(FIX / "keras/k3_convnet.keras", path)
    with zipfile.ZipFile(path, "a") as zf:
        zf.writestr("../../evil.py", "raise SystemExit('ran')\n")
        zf.writestr("/tmp/evil_abs.txt", "x")
    before = {p for p in tmp_path.rglob("*")}
    arrays = materialise(path)
    assert "conv2d/kernel" in arrays or len(arrays) > 10
    assert {p for p in tmp_path.rglob("*")} == before and not (tmp_path / "evil.py").exists()


def test_keras_zip_bomb_is_refused_before_inflating(tmp_path, monkeypatch):
    """model.weights.h5 deflated from 1 MiB of zeros (~1 KB stored) whose zip headers claim ~4 GiB:
    past deflate's 1032:1, so refused by the ratio bound, naming file and member, and nothing is
    written to TMPDIR."""
    from hostile_files import patch_zip_sizes

    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmpdir))
    monkeypatch.setattr("tempfile.tempdir", None)
    path = tmp_path / "bomb.keras"
    with zipfile.ZipFile(FIX / "keras/k3_convnet.keras") as src, \
            zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            if info.filename != "model.weights.h5":
                dst.writestr(info.filename, src.read(info))
        dst.writestr("model.weights.h5", bytes(1 << 20))
    patch_zip_sizes(path, "model.weights.h5", file_size=0xFFFF0000)
    assert path.stat().st_size < 64 << 10
    with pytest.raises(FormatError, match="claims 4294901760 bytes from .* stored bytes .deflate expands at most 1032:1"
                       ) as e:
        converters.read(path)
    assert e.value.file == str(path) and e.value.array == "model.weights.h5"
    assert list(tmpdir.iterdir()) == []


# ------------------------------------------------------------------------------------ torch pickle

@pytest.mark.parametrize("zip_format", [True, False])
def test_pth_whose_pickle_calls_os_system_runs_nothing(tmp_path, zip_format):
    path, marker = pth_that_runs_command(tmp_path, zip_format, "ran")
    with pytest.raises(FormatError, match="refused to unpickle|unpickle"):
        converters.read(path)
    assert not marker.exists()
    if zip_format:
        r = subprocess.run([sys.executable, "-m", "converters", "inspect", str(path)], capture_output=True,
                           text=True, timeout=120)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and not marker.exists()


def test_npz_pickle_runs_nothing_without_allow_pickle(tmp_path):
    marker = tmp_path / "ran"
    payload = np.empty((), dtype=object)
    payload[()] = RunsCommand(marker)
    np.savez(tmp_path / "evil.npz", w=np.ones(2), payload=payload)
    with pytest.raises(UnsupportedError, match="pickled"):
        converters.read(tmp_path / "evil.npz")
    assert not marker.exists()
    r = subprocess.run([sys.executable, "-m", "converters", "inspect", str(tmp_path / "evil.npz"),
                        "--option", "allow_pickle=false"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and not marker.exists()


# ------------------------------------------------------------------------------------ HDF5

def keras_weights_copy(tmp_path, name="w.h5"):
    """fixtures/keras/k2_convnet_weights.h5 (tf_keras save_weights) and the path of its first kernel."""
    path = tmp_path / name
    shutil.copy(FIX / "keras/k2_convnet_weights.h5", path)
    with h5py.File(path, "r") as f:
        layer = next(n.decode() if isinstance(n, bytes) else n for n in f.attrs["layer_names"]
                     if len(f[n].attrs["weight_names"]))
        wn = f[layer].attrs["weight_names"][0]
        wn = wn.decode() if isinstance(wn, bytes) else wn
    return path, f"{layer}/{wn}"


def test_hdf5_external_link_is_refused(tmp_path):
    with h5py.File(tmp_path / "other.h5", "w") as o:
        o["secret"] = np.frombuffer(SECRET, np.uint8)
    path, target = keras_weights_copy(tmp_path)
    with h5py.File(path, "a") as f:
        del f[target]
        f[target] = h5py.ExternalLink(str(tmp_path / "other.h5"), "/secret")
    with pytest.raises(UnsupportedError, match="external link"):
        materialise(path)
    linked = materialise(path, allow_external=True)  # when allowed: read through h5py, right offsets
    assert any(a.tobytes() == SECRET for a in linked.values())


def test_hdf5_external_raw_storage_is_refused(tmp_path):
    (tmp_path / "passwd").write_bytes(SECRET)
    path, target = keras_weights_copy(tmp_path)
    with h5py.File(path, "a") as f:
        del f[target]
        f.create_dataset(target, shape=(len(SECRET),), dtype="u1",
                         external=[(str(tmp_path / "passwd"), 0, len(SECRET))])
    with pytest.raises(UnsupportedError, match="external raw storage"):
        materialise(path)
    assert not never_leaks(materialise(path, allow_external=True))  # h5py would have read it


def test_hdf5_virtual_dataset_is_refused(tmp_path):
    with h5py.File(tmp_path / "src.h5", "w") as o:
        o["secret"] = np.frombuffer(SECRET, np.uint8)
    path, target = keras_weights_copy(tmp_path)
    layout = h5py.VirtualLayout(shape=(len(SECRET),), dtype="u1")
    layout[:] = h5py.VirtualSource(str(tmp_path / "src.h5"), "secret", shape=(len(SECRET),))
    with h5py.File(path, "a") as f:
        del f[target]
        f.create_virtual_dataset(target, layout)
    with pytest.raises(UnsupportedError, match="virtual dataset"):
        materialise(path)


def test_hdf5_size_claims_are_bounded_by_what_is_stored(tmp_path):
    """A chunked dataset claiming 4 TiB with no chunk written (its fill value would be allocated):
    refused before h5py reads it."""
    path, target = keras_weights_copy(tmp_path)
    with h5py.File(path, "a") as f:
        del f[target]
        f.create_dataset(target, shape=(1 << 40,), dtype="f4", chunks=(1 << 16,))
    assert path.stat().st_size < 1 << 20
    with pytest.raises(FormatError, match="claims .* bytes from .* stored bytes") as e:
        converters.read(path)
    assert e.value.file == str(path)


def test_hdf5_gzip_of_zeros_is_not_taken_for_a_bomb(tmp_path):
    """64 MiB of gzip'd zeros in ~70 KB (~1000:1, under deflate's 1032:1 ceiling): a real dataset,
    read back as h5py reads it."""
    path, target = keras_weights_copy(tmp_path)
    with h5py.File(path, "a") as f:
        del f[target]
        f.create_dataset(target, data=np.zeros(1 << 24, np.float32), chunks=(1 << 20,), compression="gzip")
        stored = f[target].id.get_storage_size()
    assert (1 << 26) > stored * 128  # what the old 128:1 bound refused
    arrays = materialise(path)
    zeros = [a for a in arrays.values() if a.shape == (1 << 24,)]
    assert len(zeros) == 1 and not zeros[0].any()


# ------------------------------------------------------------------------------------ parsers

def _safetensors(path, header, data=b""):
    blob = json.dumps(header).encode() if not isinstance(header, bytes) else header
    path.write_bytes(len(blob).to_bytes(8, "little") + blob + data)
    return path


def _npy_with_header(path, shape):
    with open(path, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, {"descr": "<f4", "fortran_order": False, "shape": shape})
    return path


def _utf8_flagged_zip(path):
    """A zip whose member name claims UTF-8 (flag bit 11) but is not."""
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("model.weights.h5", b"x")
    data = bytearray(path.read_bytes())
    for sig in (b"PK\x01\x02", b"PK\x03\x04"):
        at = data.find(sig)
        flag_at = at + (8 if sig == b"PK\x01\x02" else 6)
        data[flag_at + 1] |= 0x08  # bit 11 of the little-endian flags: the name is UTF-8
        name_at = at + (46 if sig == b"PK\x01\x02" else 30)
        data[name_at] = 0xFF
    path.write_bytes(bytes(data))
    return path


def _deep_prototxt(tmp_path):
    shutil.copy(FIX / "caffe/mtcnn_pnet/det1.caffemodel", tmp_path / "det1.caffemodel")
    (tmp_path / "det1.prototxt").write_text("layer { " * 100000 + "}" * 100000)
    return tmp_path / "det1.caffemodel"


def _deep_symbol(tmp_path):
    shutil.copy(FIX / "mxnet/smallnet-0000.params", tmp_path / "net-0000.params")
    (tmp_path / "net-symbol.json").write_text("[" * 100000 + "]" * 100000)
    return tmp_path / "net-0000.params"


def _onnx_overflowing_dims(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    w = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[1 << 40, 1 << 40], raw_data=b"\0" * 16)
    graph = helper.make_graph([], "g", [], [], [w])
    onnx.save(helper.make_model(graph), tmp_path / "dims.onnx")
    return tmp_path / "dims.onnx"


HOSTILE = {
    "safetensors_shape_string": lambda p: _safetensors(
        p / "a.safetensors", {"w": {"dtype": "F32", "shape": "12", "data_offsets": [0, 4]}}, b"\0" * 4),
    "safetensors_dtype_list": lambda p: _safetensors(
        p / "a.safetensors", {"w": {"dtype": ["F32"], "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4),
    "safetensors_offsets_float": lambda p: _safetensors(
        p / "a.safetensors", {"w": {"dtype": "F32", "shape": [1], "data_offsets": [0.0, 4.5]}}, b"\0" * 8),
    "safetensors_zero_by_2_62": lambda p: _safetensors(
        p / "a.safetensors", {"w": {"dtype": "F32", "shape": [0, 1 << 62], "data_offsets": [0, 0]}}),
    "safetensors_deep_json": lambda p: _safetensors(
        p / "a.safetensors", b'{"w":' + b"[" * 200000 + b"]" * 200000 + b"}"),
    "npy_zero_by_2_62": lambda p: _npy_with_header(p / "a.npy", (0, 1 << 62)),
    "onnx_dims_overflow": _onnx_overflowing_dims,
    "caffe_deep_prototxt": _deep_prototxt,
    "mxnet_deep_symbol": _deep_symbol,
    "keras_zip_non_utf8_name": lambda p: _utf8_flagged_zip(p / "a.zip"),  # .zip: sniffers open it
    "directory_as_caffemodel": lambda p: (p / "d.caffemodel").mkdir() or p / "d.caffemodel",
}


_FRAMEWORK = {"safetensors": "safetensors", "npy": "numpy", "onnx": "onnx", "caffe": "caffe", "mxnet": "mxnet",
              "keras": "keras", "directory": "caffe"}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_parser_failures_are_one_converters_error(tmp_path, case):
    path = HOSTILE[case](tmp_path)
    try:
        detect(path)  # sniffing the damaged file is either an answer or a ConvertersError
    except ConvertersError:
        pass
    with pytest.raises(ConvertersError) as info:
        materialise(path, framework=_FRAMEWORK[case.split("_")[0]])
    assert path.name in str(info.value)


def test_cli_prints_one_line_and_exits_2_on_hostile_inputs(tmp_path):
    outputs = []
    for case in ("safetensors_shape_string", "onnx_dims_overflow", "caffe_deep_prototxt", "npy_zero_by_2_62"):
        d = tmp_path / case
        d.mkdir()
        path = HOSTILE[case](d)
        r = subprocess.run([sys.executable, "-m", "converters", "inspect", str(path)], capture_output=True,
                           text=True, timeout=120)
        outputs.append((case, r.returncode, r.stderr.strip().splitlines()))
    assert all(rc == 2 and len(lines) == 1 and "Traceback" not in lines[0] for _, rc, lines in outputs), outputs


# ------------------------------------------------------------------------------------ torch zip size claims

def _deflated_pth(tmp_path, **tensors):
    import torch
    from hostile_files import rezip

    torch.save(tensors, tmp_path / "plain.pth")
    return rezip(tmp_path / "plain.pth", tmp_path / "deflated.pth", zipfile.ZIP_DEFLATED)


def _torch_load_never_runs(monkeypatch):
    import torch

    def refuse(*a, **k):
        raise AssertionError("torch.load ran on a file the bounds should have refused")
    monkeypatch.setattr(torch, "load", refuse)


@pytest.mark.parametrize("claim, message", [
    (0xFFFFFFF0, "claims 4294967280 bytes from .* stored bytes .deflate expands at most 1032:1"),  # a bomb
    (2 * 40_000 * 4, "holds 320000 bytes, the pickle declares 160000"),  # plausible for deflate, not for w
])
def test_pth_record_claiming_more_than_it_can_hold_is_refused_before_torch_reads_it(tmp_path, monkeypatch,
                                                                                     claim, message):
    import torch
    from hostile_files import patch_zip_sizes

    path = _deflated_pth(tmp_path, w=torch.randn(40_000), b=torch.zeros(8))
    patch_zip_sizes(path, "/data/0", file_size=claim)
    _torch_load_never_runs(monkeypatch)
    with pytest.raises(FormatError, match=message) as e:
        materialise(path, framework="torch")
    assert e.value.file == str(path)


def test_pth_member_past_the_end_of_the_file_is_refused(tmp_path, monkeypatch):
    import torch
    from hostile_files import patch_zip_sizes

    torch.save({"w": torch.ones(1000)}, tmp_path / "w.pth")
    patch_zip_sizes(tmp_path / "w.pth", "/data/0", compress_size=1 << 31, file_size=1 << 31)
    _torch_load_never_runs(monkeypatch)
    with pytest.raises(FormatError, match="past the end of the"):
        materialise(tmp_path / "w.pth", framework="torch")


def test_pth_stored_member_claiming_another_size_is_refused(tmp_path, monkeypatch):
    import torch
    from hostile_files import patch_zip_sizes

    torch.save({"w": torch.ones(1000)}, tmp_path / "w.pth")
    patch_zip_sizes(tmp_path / "w.pth", "/version", file_size=1 << 30)
    _torch_load_never_runs(monkeypatch)
    with pytest.raises(FormatError, match="is stored .* but claims 1073741824"):
        materialise(tmp_path / "w.pth", framework="torch")


def test_pth_metadata_record_inflating_past_its_size_is_refused(tmp_path, monkeypatch):
    """A real 8 MiB `version` record (zeros, within deflate's ratio): torch would read it whole."""
    import torch

    torch.save({"w": torch.ones(4)}, tmp_path / "w.pth")
    with zipfile.ZipFile(tmp_path / "w.pth") as zin, \
            zipfile.ZipFile(tmp_path / "bomb.pth", "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, bytes(8 << 20) if info.filename.endswith("/version") else zin.read(info))
    _torch_load_never_runs(monkeypatch)
    with pytest.raises(FormatError, match="version claims 8388608 bytes"):
        materialise(tmp_path / "bomb.pth", framework="torch")


def test_pth_bzip2_member_is_named_unsupported(tmp_path):
    import torch
    from hostile_files import rezip

    torch.save({"w": torch.ones(4)}, tmp_path / "w.pth")
    rezip(tmp_path / "w.pth", tmp_path / "bz.pth", zipfile.ZIP_BZIP2)
    with pytest.raises(UnsupportedError, match="compression method 12"):
        materialise(tmp_path / "bz.pth", framework="torch")


def test_legacy_pth_declaring_more_storage_than_the_file_holds_is_refused(tmp_path, monkeypatch):
    """Pre-1.6 format: the pickle's element count (here 70,000 -> 2**31-1 floats, 8 GiB) is what
    torch allocates before reading the bytes; the file holds 280 KB after the pickle."""
    import torch

    torch.save({"w": torch.ones(70_000)}, tmp_path / "w.pth", _use_new_zipfile_serialization=False)
    data = bytearray((tmp_path / "w.pth").read_bytes())
    numel = b"J" + (70_000).to_bytes(4, "little")
    at = data.index(numel, data.index(b"cpu"))  # the count in the persistent id, not the shape after it
    data[at + 1:at + 5] = (2**31 - 1).to_bytes(4, "little")
    (tmp_path / "w.pth").write_bytes(bytes(data))
    _torch_load_never_runs(monkeypatch)
    with pytest.raises(FormatError, match=r"declares 1 storages of 85899345\d+ bytes"):
        materialise(tmp_path / "w.pth", framework="torch")
