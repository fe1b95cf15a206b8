"""numpy reader against numpy's own loader: .npy, stored and compressed .npz, pickled containers
(the Python 2 dict of dicts facenet's TF MTCNN port ships as det1.npy) behind allow_pickle."""
import pickle
import struct
import zipfile

import numpy as np
import pytest

import converters
from converters.errors import ConvertersError, FormatError, UnsupportedError

RNG = np.random.default_rng(0)
MEMBERS = {"conv1/weights": RNG.standard_normal((3, 3, 2, 4)).astype(np.float32),
           "conv1/biases": np.arange(4, dtype=np.int32), "step": np.array(3, np.int64),
           "fortran": np.asfortranarray(RNG.standard_normal((4, 5))), "big_endian": np.arange(6, dtype=">f4")}


class Py2Pickler(pickle._Pickler):
    """Writes bytes with the opcodes Python 2 used for `str` (SHORT_BINSTRING/BINSTRING), so the
    pickle is laid out as a Python 2 np.save of a dict (keys and array data as py2 str)."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj):
        n = len(obj)
        head = pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else pickle.BINSTRING + struct.pack("<i", n)
        self.write(head + obj)
        self.memoize(obj)
    dispatch[bytes] = save_py2_str


def facenet_like(path):
    """det1.npy as facenet's align/det1.npy: {layer: {'weights'|'biases'|'alpha': array}}, written
    the way np.save wrote an object array under Python 2: .npy header then a protocol-2 pickle."""
    layers = {b"conv1": {b"weights": RNG.standard_normal((3, 3, 3, 10)).astype(np.float32),
                         b"biases": RNG.standard_normal(10).astype(np.float32)},
              b"PReLU1": {b"alpha": RNG.standard_normal(10).astype(np.float32)},
              b"conv4-1": {b"weights": RNG.standard_normal((1, 1, 32, 2)).astype(np.float32),
                           b"biases": RNG.standard_normal(2).astype(np.float32)}}
    arr = np.empty((), dtype=object)
    arr[()] = layers
    with open(path, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, np.lib.format.header_data_from_array_1_0(arr))
        Py2Pickler(fh, protocol=2).dump(arr)
    return layers


def test_npy_and_npz_match_numpy(tmp_path):
    np.save(tmp_path / "a.npy", MEMBERS["fortran"])
    np.savez(tmp_path / "s.npz", **MEMBERS)
    np.savez_compressed(tmp_path / "c.npz", **MEMBERS)
    with converters.read(tmp_path / "a.npy") as f:
        np.testing.assert_array_equal(f["array"].numpy(), np.load(tmp_path / "a.npy"))
    for name in ("s.npz", "c.npz"):
        with converters.read(tmp_path / name) as f, np.load(tmp_path / name) as ref:
            assert list(f) == list(ref.files)
            for k in ref.files:
                a = f[k].numpy()
                assert a.shape == ref[k].shape and a.dtype.newbyteorder("=") == ref[k].dtype.newbyteorder("=")
                np.testing.assert_array_equal(a, ref[k])
            assert f["step"].shape == () and f["conv1/weights"].meta["role"] == "weight"


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
def test_each_materialisation_is_a_new_writeable_array(tmp_path, save):
    """Stored members are pread into a new array, compressed ones inflated into one; either is
    handed out without a second copy, so two .numpy() calls must still be two arrays."""
    save(tmp_path / "m.npz", **MEMBERS)
    with converters.read(tmp_path / "m.npz") as f, np.load(tmp_path / "m.npz") as ref:
        for k in ref.files:
            a, b = f[k].numpy(), f[k].numpy()
            assert a.flags.writeable and a.flags.c_contiguous and not np.shares_memory(a, b), k
            a[...] = 0
            np.testing.assert_array_equal(b, ref[k])
        if save is np.savez:
            view = f["conv1/weights"].numpy(copy=False)
            assert not view.flags.writeable and not view.flags.owndata


def test_python2_pickled_dict_of_dicts_is_read_behind_the_flag(tmp_path):
    path = tmp_path / "det1.npy"
    facenet_like(path)
    ref = np.load(path, allow_pickle=True, encoding="latin1").item()  # how facenet loads it
    with pytest.raises(UnsupportedError, match="pickled Python objects"):
        converters.read(path)
    with converters.read(path, allow_pickle=True, encoding="latin1") as f:
        assert list(f) == [f"{layer}/{name}" for layer, d in ref.items() for name in d]
        for layer, d in ref.items():
            for name, value in d.items():
                np.testing.assert_array_equal(f[f"{layer}/{name}"].numpy(), value)
        assert f["conv1/weights"].meta["layer"] == "conv1" and f["conv1/weights"].role == "weight"
        assert f["conv1/biases"].role == "bias" and f["conv4-1/weights"].shape == (1, 1, 32, 2)
    with pytest.raises(ConvertersError):  # numpy's default ASCII cannot decode Python 2 array data
        converters.read(path, allow_pickle=True)["conv1/weights"].numpy()
    with converters.read(path, allow_pickle=True, encoding="bytes") as f:  # byte keys decoded for names
        assert "PReLU1/alpha" in f


@pytest.mark.parametrize("compress", [False, True])
def test_object_members_of_npz_are_flattened(tmp_path, compress):
    nested = np.empty((), dtype=object)
    nested[()] = {"fc": {"w": np.ones((2, 3), np.float32), "b": np.zeros(2)}, "note": "text"}
    save = np.savez_compressed if compress else np.savez
    save(tmp_path / "o.npz", params=nested, plain=np.arange(3))
    with pytest.raises(UnsupportedError):
        converters.read(tmp_path / "o.npz")
    with converters.read(tmp_path / "o.npz", allow_pickle=True) as f:
        assert list(f) == ["params/fc/w", "params/fc/b", "plain"]  # the string is left out
        np.testing.assert_array_equal(f["params/fc/w"].numpy(), np.ones((2, 3)))
        assert f["params/fc/w"].meta["layer"] == "params/fc"


def test_encoding_must_be_one_numpy_knows(tmp_path):
    np.save(tmp_path / "a.npy", np.arange(3))
    with pytest.raises(ConvertersError, match="encoding"):
        converters.read(tmp_path / "a.npy", encoding="utf-16")


def test_compressed_member_claiming_1e12_elements_is_refused_before_allocating(tmp_path):
    """A 600-byte deflated member whose header says (10**12,) float64 (8 TB)."""
    header = {"descr": "<f8", "fortran_order": False, "shape": (10**12,)}
    with open(tmp_path / "h.npy", "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, header)
        fh.write(b"\0" * 512)
    with zipfile.ZipFile(tmp_path / "bomb.npz", "w", zipfile.ZIP_DEFLATED) as zf:
        zf.write(tmp_path / "h.npy", "x.npy")
    assert (tmp_path / "bomb.npz").stat().st_size < 1000
    with pytest.raises(FormatError, match="needs 8000000000"):
        converters.read(tmp_path / "bomb.npz")
    with zipfile.ZipFile(tmp_path / "stored.npz", "w", zipfile.ZIP_STORED) as zf:
        zf.write(tmp_path / "h.npy", "x.npy")
    with pytest.raises(FormatError, match="needs 8000000000000 bytes but its record holds"):
        converters.read(tmp_path / "stored.npz")


def test_inspect_passes_reader_options(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "det1.npy"
    facenet_like(path)
    run = lambda *a: subprocess.run([sys.executable, "-m", "converters", "inspect", str(path), *a],  # noqa: E731
                                    capture_output=True, text=True, timeout=120)
    refused = run()
    assert refused.returncode == 2 and "allow_pickle" in refused.stderr
    ok = run("--option", "allow_pickle=true", "--option", "encoding=latin1")
    assert ok.returncode == 0 and "conv4-1/weights" in ok.stdout and "PReLU1/alpha" in ok.stdout


def test_savez_compressed_of_zeros_reads_back_and_a_forged_size_is_refused(tmp_path):
    """8 MiB of zeros deflates ~1030:1: under deflate's own 1032:1 ceiling, so it reads back as
    numpy.load gives it; the same member whose zip headers claim ~4 GiB is a bomb, refused before
    anything is inflated, naming file and member."""
    from hostile_files import patch_zip_sizes

    path = tmp_path / "zeros.npz"
    np.savez_compressed(path, zeros=np.zeros(1 << 21, np.float32), w=MEMBERS["conv1/weights"])
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("zeros.npy")
    assert info.file_size > 128 * info.compress_size + (4 << 20)  # what a 128:1 bound refused
    with np.load(path) as ref, converters.read(path) as f:
        assert sorted(f) == sorted(ref.files)
        for name in ref.files:
            np.testing.assert_array_equal(f[name].numpy(), ref[name])
    patch_zip_sizes(path, "zeros.npy", file_size=0xFFFF0000)
    with pytest.raises(FormatError, match=r"member zeros.npy claims 4294901760 bytes .*1032:1") as e:
        converters.read(path)
    assert e.value.file == str(path) and e.value.array == "zeros"
