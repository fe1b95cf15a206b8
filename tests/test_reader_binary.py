"""readers/_binary: `.numpy()` reads with pread into a new buffer of its own, `.numpy(copy=False)`
stays a view into the map, and a file cut short after opening is a TruncatedError naming file,
array and offset (a memory map would have died of SIGBUS)."""
from __future__ import annotations

import os
import shutil
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
