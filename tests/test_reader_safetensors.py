"""[safetensors] reader against files written by the safetensors package, compared with its own
loader (safetensors.numpy.load_file), and the header checks that keep per-tensor work small."""
import json

import numpy as np
import pytest

from converters import read
from converters.errors import FormatError, TruncatedError, UnsupportedError

st = pytest.importorskip("safetensors.numpy")


def _tensors():
    rng = np.random.default_rng(0)
    out = {f"layer{i}.weight": rng.standard_normal((3, 4 + i), dtype=np.float32) for i in range(5)}
    out.update({"b.bias": np.arange(7, dtype=np.float16), "c.int": np.arange(-3, 3, dtype=np.int64),
                "d.u8": np.arange(9, dtype=np.uint8).reshape(3, 3), "e.scalar": np.array(2.5, np.float64),
                "f.empty": np.zeros((0, 5), np.float32), "g.bool": np.array([True, False, True]),
                "h.big": rng.standard_normal((512, 1024), dtype=np.float32)})
    return out


def test_every_tensor_equals_the_safetensors_loader(tmp_path):
    path = tmp_path / "m.safetensors"
    st.save_file(_tensors(), str(path), metadata={"who": "test"})
    ref = st.load_file(str(path))
    with read(path) as f:
        assert f.framework == "safetensors" and f.meta["metadata"] == {"who": "test"}
        assert set(f) == set(ref)
        for name, h in f.items():
            got = h.numpy()
            assert got.dtype == ref[name].dtype and got.shape == ref[name].shape, name
            assert got.tobytes() == ref[name].tobytes(), name
            assert got.flags.writeable and got.flags.c_contiguous
            view = h.numpy(copy=False)
            assert view.tobytes() == got.tobytes() and (not view.flags.writeable or not view.size)
        assert f["layer0.weight"].role == "weight" and f["b.bias"].role == "bias"
        # two materialisations are two arrays: writing one leaves the other alone
        a, b = f["h.big"].numpy(), f["h.big"].numpy()
        a[:] = 0
        assert b.tobytes() == ref["h.big"].tobytes()
    # file order, not the header's (sorted) key order
    raw = path.read_bytes()
    header = json.loads(raw[8:8 + int.from_bytes(raw[:8], "little")])
    data_order = sorted(ref, key=lambda k: header[k]["data_offsets"][0])
    with read(path) as f:
        assert list(f) == data_order


def test_bfloat16_through_ml_dtypes(tmp_path):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    torch_st = pytest.importorskip("safetensors.torch")
    torch = pytest.importorskip("torch")
    t = torch.arange(12, dtype=torch.float32).reshape(3, 4).to(torch.bfloat16)
    path = tmp_path / "bf.safetensors"
    torch_st.save_file({"w": t}, str(path))
    with read(path) as f:
        got = f["w"].numpy()
    assert got.dtype == ml_dtypes.bfloat16 and got.view(np.uint16).tobytes() == t.view(torch.int16).numpy().tobytes()


def _file(path, header, data=b""):
    blob = json.dumps(header).encode()
    path.write_bytes(len(blob).to_bytes(8, "little") + blob + data)
    return path


@pytest.mark.parametrize("entry,error,match", [
    ({"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}, FormatError, "do not hold F32"),
    ({"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}, FormatError, "non-negative int dims"),
    ({"dtype": "F32", "shape": [True], "data_offsets": [0, 4]}, FormatError, "non-negative int dims"),
    ({"dtype": "F32", "shape": 1, "data_offsets": [0, 4]}, FormatError, "non-negative int dims"),
    ({"dtype": "F32", "shape": [1], "data_offsets": [0]}, FormatError, "lacks dtype/shape/data_offsets"),
    ({"dtype": ["F32"], "shape": [1], "data_offsets": [0, 4]}, FormatError, "is not a dtype string"),
    ({"dtype": "Q99", "shape": [1], "data_offsets": [0, 4]}, UnsupportedError, "dtype Q99"),
    ({"dtype": "F32", "shape": [1], "data_offsets": [-4, 0]}, FormatError, "non-negative"),
    ({"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}, TruncatedError, "needs bytes"),
    ({"dtype": "F32", "shape": [1 << 40, 1 << 30], "data_offsets": [0, 1 << 72]}, FormatError, "do not hold"),
    ([1, 2], FormatError, "lacks dtype/shape/data_offsets"),
])
def test_bad_entries_name_the_tensor(tmp_path, entry, error, match):
    """The first tensor of each dtype gets the full check; later ones the fast one: both refuse."""
    ok = {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}
    for header in ({"bad": entry}, {"ok": ok, "bad": entry}):
        path = _file(tmp_path / "a.safetensors", header, b"\0" * 8)
        with pytest.raises(error, match=match) as e:
            read(path)
        assert e.value.array == "bad"
