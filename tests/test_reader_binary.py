"""readers/_binary: `.numpy()` reads with pread into a new buffer of its own, `.numpy(copy=False)`
stays a view into the map, and a file cut short after opening is a TruncatedError naming file,
array and offset (a memory map would have died of SIGBUS)."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import converters
from converters.arrays import release_pages
from converters.errors import TruncatedError
from converters.readers._binary import ANON_MIN, FileArray, FileView, new_array

FIX = Path(__file__).resolve().parents[1] / "fixtures"
FILES = {"caffe": FIX / "caffe/mtcnn_pnet/det1.caffemodel", "tensorflow": FIX / "tensorflow/tf2_keras/ckpt-1",
         "mxnet": FIX / "mxnet/smallnet-0000.params"}


def _copy(fmt, tmp_path) -> tuple[Path, Path]:
    """(path to open, the file holding the arrays) of a copy of the format's fixture."""
    src = FILES[fmt]
    if fmt == "tensorflow":
        for p in src.parent.glob(src.name + ".*"):
            shutil.copy(p, tmp_path / p.name)
        return tmp_path / src.name, next(tmp_path.glob(src.name + ".data-*"))
    shutil.copy(src, tmp_path / src.name)
    return tmp_path / src.name, tmp_path / src.name


def _pread_backed(f) -> list:
    """Handles whose `.numpy()` reads into a new buffer (FileArray, or a reader's own `fresh` kind:
    TF's BundleArray reads small arrays from one pread chunk)."""
    return [h for h in f.values() if isinstance(h, FileArray) or getattr(h, "_fresh", False)]


@pytest.mark.parametrize("fmt", sorted(FILES))
def test_numpy_is_a_new_writeable_array_equal_to_the_mapped_view(fmt):
    with converters.read(FILES[fmt]) as f:
        handles = _pread_backed(f)
        assert handles, f"no pread-backed handles in {fmt}"
        for h in handles:
            view, a, b = h.numpy(copy=False), h.numpy(), h.numpy()
            assert a.flags.writeable and a.flags.c_contiguous
            assert a is not b and not np.shares_memory(a, b) and not np.shares_memory(a, view)
            np.testing.assert_array_equal(a, view)
            if a.size:
                a.reshape(-1)[0] += 1  # a copy of its own: the next read is untouched
                np.testing.assert_array_equal(h.numpy(), view)
            del view


@pytest.mark.parametrize("fmt", sorted(FILES))
def test_file_cut_short_after_opening_is_a_truncated_error(fmt, tmp_path):
    path, data_file = _copy(fmt, tmp_path)
    with converters.read(path) as f:
        last = max(_pread_backed(f), key=lambda h: h.nbytes)
        start = data_file.read_bytes().find(last.numpy().tobytes())
        assert start > 0
        os.truncate(data_file, start + last.nbytes // 2)  # the file shrinks under the open reader
        with pytest.raises(TruncatedError) as e:
            last.numpy()
    assert e.value.file == str(data_file) and e.value.array == last.name and e.value.offset is not None
    assert "truncated or replaced while open" in str(e.value)


def test_bounds_are_checked_before_reading(tmp_path):
    p = tmp_path / "f.bin"
    p.write_bytes(bytes(100))
    view = FileView(p)
    try:
        with pytest.raises(TruncatedError) as e:
            view.read_array(96, np.float32, (2,), "x")
        assert e.value.offset == 96 and e.value.array == "x" and "float32[2]" in str(e.value)
        with pytest.raises(TruncatedError):
            view.array(-4, np.float32, (1,), "x")
        assert view.read_array(96, np.float32, (1,)).shape == (1,)
        assert view.read_array(0, np.float32, (0, 3)).shape == (0, 3)
    finally:
        view.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="MADV_NOHUGEPAGE is Linux-only")
def test_big_arrays_get_a_mapping_of_their_own_that_release_pages_leaves_alone():
    a = new_array((ANON_MIN // 4 + 7,), np.float32)
    assert a.flags.writeable and a.flags.c_contiguous and a.base is not None
    a[:] = 3.0
    release_pages(a)  # MADV_DONTNEED would zero anonymous memory: it must not take this for a file map
    assert float(a.min()) == 3.0
    small = new_array((10,), np.float32)
    assert small.flags.owndata and small.base is None  # below ANON_MIN: an ordinary np.empty
    assert new_array((), np.float64).shape == ()


@pytest.mark.skipif(not hasattr(__import__("mmap"), "MADV_DONTNEED"), reason="no MADV_DONTNEED here")
def test_release_pages_touches_only_read_only_file_maps(tmp_path):
    """MADV_DONTNEED zeroes anonymous memory and drops a private map's writes: release_pages must
    leave both alone, and still release (harmlessly) the pages of a read-only map of a file."""
    import mmap

    n = 1 << 20
    anonymous = mmap.mmap(-1, n)
    anonymous[:] = b"\x07" * n
    release_pages(np.frombuffer(anonymous, np.uint8))
    assert anonymous[:4] == b"\x07" * 4 and anonymous[n - 1] == 7
    p = tmp_path / "f.bin"
    p.write_bytes(b"\x05" * n)
    with open(p, "rb") as fh:
        private = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_COPY)
        private[:] = b"\x09" * n  # copy-on-write pages of this process only
        release_pages(np.frombuffer(private, np.uint8))
        assert private[0] == 9 and private[n - 1] == 9
        mapped = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        view = np.frombuffer(mapped, np.uint8)
        assert int(view.sum()) == 5 * n
        release_pages(view)
        assert int(view.sum()) == 5 * n  # paged back in from the file
        del view
        for m in (anonymous, private, mapped):
            m.close()


# ----------------------------------------------------- framework-made files cut short while open

_CUT_WHILE_OPEN = r"""
import hashlib, json, os, sys
sys.path.insert(0, os.getcwd())
import converters
from converters.errors import TruncatedError

path, data_file, cut = sys.argv[1], sys.argv[2], int(sys.argv[3])
out = {}
with converters.read(path) as f:
    handles = list(f.values())
    os.truncate(data_file, cut)
    for h in handles:
        try:
            out[h.name] = hashlib.sha1(h.numpy().tobytes()).hexdigest()
        except TruncatedError as e:
            out[h.name] = {"file": e.file, "array": e.array}
print(json.dumps(out))
"""


def _cut_while_open(path, data_file, cut) -> dict:
    """{name: sha1 of .numpy() or the TruncatedError's file and array} after `data_file` was cut to
    `cut` bytes under the open reader. In a child: a SIGBUS (a read through the map) fails the test
    with the child's exit status instead of killing pytest."""
    r = subprocess.run([sys.executable, "-c", _CUT_WHILE_OPEN, str(path), str(data_file), str(cut)],
                       capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parents[1])
    assert r.returncode == 0, f"the child died with status {r.returncode} (-7: SIGBUS): {r.stderr[-3000:]}"
    return json.loads(r.stdout.splitlines()[-1])


def _check_cut(path, data_file=None, cut=None, whole_pages=True):
    """Cut `data_file` (default: the file opened) under the open reader, in the middle of an array
    when the reader knows where arrays lie (else at half its size): every array whose bytes are
    still there reads as before, every other `.numpy()` is a TruncatedError naming file and array."""
    data_file = Path(data_file or path)
    with converters.read(path) as f:
        before = {k: hashlib.sha1(h.numpy().tobytes()).hexdigest() for k, h in f.items()}
        spans = {k: (s.offset, s.offset + s.nbytes) for k, h in f.items()
                 if (s := h.stored_span()) is not None and s.nbytes}
    if cut is None:
        middle = sorted(spans.values())[len(spans) // 2] if spans else None
        cut = (middle[0] + middle[1]) // 2 if middle else data_file.stat().st_size // 2
    assert not whole_pages or data_file.stat().st_size - cut > 2 * 4096, "too small to leave whole pages past the cut"
    got = _cut_while_open(path, data_file, cut)
    assert sorted(got) == sorted(before)
    refused = {k for k, v in got.items() if isinstance(v, dict)}
    assert refused, "nothing was refused"
    for k in refused:
        assert got[k] == {"file": str(data_file), "array": k}
    for k in set(got) - refused:
        assert got[k] == before[k], k
    for k, (start, end) in spans.items():
        assert (k in refused) == (end > cut), (k, start, end, cut)
    return got


def test_safetensors_cut_short_while_open(tmp_path):
    from safetensors.numpy import save_file

    rng = np.random.default_rng(1)
    tensors = {f"layer{i}.weight": rng.standard_normal((16, 16) if i % 2 else (64,)).astype(np.float32)
               for i in range(300)}
    tensors["big"] = np.arange(1 << 16, dtype=np.int64)  # read on its own (past SmallReads' window)
    save_file(tensors, str(tmp_path / "m.safetensors"))
    _check_cut(tmp_path / "m.safetensors")


def _onnx_model(path, n=300, subgraph=False, external=False):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(2)
    inits = [numpy_helper.from_array(rng.standard_normal((16, 16) if i % 2 else (64,)).astype(np.float32), f"p{i}")
             for i in range(n)]
    inits.append(helper.make_tensor("ints", TensorProto.INT64, [4], [1, -2, 3, 1 << 40]))  # int64_data varints
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    nodes = [helper.make_node("Identity", ["p0"], ["y"])]
    if subgraph:  # an If node: the field-by-field walk opens the file, not the fast path
        branch = helper.make_graph([helper.make_node("Identity", ["p1"], ["z"])], "b", [],
                                   [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)])
        nodes.append(helper.make_node("If", ["cond"], ["w"], then_branch=branch, else_branch=branch))
    model = helper.make_model(helper.make_graph(nodes, "g", [], [out], inits))
    if external:
        onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                  location=path.name + ".data", size_threshold=0)
    else:
        onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("kind", ["fast_path", "walk", "external_data"])
def test_onnx_cut_short_while_open(tmp_path, kind):
    path = _onnx_model(tmp_path / "m.onnx", subgraph=kind == "walk", external=kind == "external_data")
    data_file = tmp_path / "m.onnx.data" if kind == "external_data" else path
    with converters.read(path) as f:
        assert type(f["p5"]).__name__ == ("WindowArray" if kind == "fast_path" else "FileArray")
    got = _check_cut(path, data_file)
    if kind != "external_data":
        assert isinstance(got["ints"], dict)  # decoded from the varints' pread, past the cut


def test_onnx_typed_fields_cut_short_while_open(tmp_path):
    """float_data / int32_data / int64_data tensors (fixtures/onnx/typed_fields.onnx, onnx.helper),
    decoded from a pread of their bytes: cut inside the file's one page, the map would have given
    zeros past the cut instead of an error."""
    shutil.copy(FIX / "onnx/typed_fields.onnx", tmp_path / "t.onnx")
    _check_cut(tmp_path / "t.onnx", cut=200, whole_pages=False)


@pytest.mark.parametrize("compressed", [False, True])
def test_npz_cut_short_while_open(tmp_path, compressed):
    rng = np.random.default_rng(3)
    arrays = {f"a{i}": rng.standard_normal((16, 16) if i % 2 else (64,)).astype(np.float32) for i in range(300)}
    arrays["fortran"] = np.asfortranarray(rng.standard_normal((40, 30)))  # read transposed
    (np.savez_compressed if compressed else np.savez)(tmp_path / "m.npz", **arrays)
    got = _check_cut(tmp_path / "m.npz")
    assert isinstance(got["fortran"], dict)  # the last member: past the cut


@pytest.mark.parametrize("fixture", ["smallnet-0000.params", "mtcnn_pnet/det1-0001.params"])
def test_mxnet_cut_short_while_open(tmp_path, fixture):
    """fixtures/mxnet (mx.nd.save): smallnet's V2 arrays come from the fast walk (one page: the map
    would have read zeros past the cut), det1's legacy ones from the field-by-field walk."""
    path = tmp_path / Path(fixture).name
    shutil.copy(FIX / "mxnet" / fixture, path)
    with converters.read(path) as f:
        kinds = {type(h).__name__ for h in f.values()}
    assert kinds == ({"WindowArray"} if fixture.startswith("smallnet") else {"FileArray"})
    if fixture.startswith("smallnet"):
        _check_cut(path, whole_pages=False)
    else:
        _check_cut(path, cut=8192)
