"""Every transform: result, shape rule agreeing with the result, and inverse."""
import numpy as np
import pytest

from converters.errors import MappingError
from converters.mapping.transforms import REGISTRY, build, chain_apply, chain_shape

rng = np.random.default_rng(0)

# (spec, input shape); each must satisfy shape(x) == apply(x).shape and inverse(apply(x)) == x
INVERTIBLE = [
    ({"permute": [3, 2, 0, 1]}, (3, 3, 4, 8)),
    ("transpose", (5, 7)),
    ({"transpose": [0, 2]}, (2, 3, 4)),
    ("tf_conv", (3, 4, 8)),          # conv1d K,I,O
    ("tf_conv", (3, 3, 4, 8)),       # conv2d H,W,I,O
    ("tf_conv", (2, 3, 3, 4, 8)),    # conv3d
    ("tf_conv_transpose", (3, 3, 8, 4)),
    ("tf_dense", (5, 7)),
    ("tf_depthwise", (3, 3, 4, 2)),
    ({"reshape": [-1, 4]}, (2, 3, 4)),
    ({"squeeze": {"axis": 1}}, (4, 1, 3)),
    ({"unsqueeze": 0}, (4, 3)),
    ({"flip": {"axis": 1}}, (8, 3, 3, 3)),
    ({"flatten_order": {"h": 2, "w": 3, "c": 4}}, (5, 24)),
    ({"flatten_order": {"h": 2, "w": 3, "c": 4, "order": "hwc_to_whc"}}, (5, 24)),
    ("tf_conv1d_as_2d", (5, 3, 4)),
    ({"tf_conv1d_as_2d": "1k"}, (5, 3, 4)),
    ({"gates": {"from": "zrh", "to": "rzh"}}, (12, 5)),
    ({"gate_add": {"gates": "ifjo", "gate": "f", "value": 1.0}}, (8,)),
    ({"scale": 2.5}, (3,)),
    ({"add": 1.0}, (3,)),
]


@pytest.mark.parametrize("spec,shape", INVERTIBLE, ids=[str(s) for s, _ in INVERTIBLE])
def test_shape_rule_and_inverse(spec, shape):
    t = build(spec)
    x = rng.standard_normal(shape).astype(np.float32)
    y = t.apply(x)
    assert tuple(y.shape) == tuple(t.shape(shape))
    back = t.inverse(shape).apply(y)
    np.testing.assert_allclose(back, x, rtol=1e-6, atol=1e-6)


def test_tf_conv_matches_a_real_convolution():
    """An HWIO kernel applied NHWC equals the permuted OIHW kernel applied NCHW."""
    torch = pytest.importorskip("torch")
    k = rng.standard_normal((3, 3, 4, 6)).astype(np.float32)
    x = rng.standard_normal((1, 4, 8, 8)).astype(np.float32)
    w = build("tf_conv").apply(k)
    out = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(np.ascontiguousarray(w)))
    # direct NHWC correlation with the HWIO kernel
    xh = x.transpose(0, 2, 3, 1)
    ref = np.zeros((1, 6, 6, 6), np.float32)
    for i in range(6):
        for j in range(6):
            ref[0, i, j] = np.tensordot(xh[0, i:i + 3, j:j + 3, :], k, axes=3)
    np.testing.assert_allclose(out.numpy().transpose(0, 2, 3, 1), ref, rtol=1e-4, atol=1e-4)


def test_depthwise_matches_grouped_convolution():
    torch = pytest.importorskip("torch")
    c, m = 3, 2
    k = rng.standard_normal((3, 3, c, m)).astype(np.float32)
    x = rng.standard_normal((1, c, 6, 6)).astype(np.float32)
    w = torch.from_numpy(np.ascontiguousarray(build("tf_depthwise").apply(k)))
    out = torch.nn.functional.conv2d(torch.from_numpy(x), w, groups=c).numpy()
    # TF depthwise: output channel c*m + j uses input channel c with kernel k[..., c, j]
    for ch in range(c):
        for j in range(m):
            ref = np.array([[np.sum(x[0, ch, a:a + 3, b:b + 3] * k[:, :, ch, j]) for b in range(4)] for a in range(4)])
            np.testing.assert_allclose(out[0, ch * m + j], ref, rtol=1e-4, atol=1e-4)


def test_flatten_order_makes_nhwc_dense_equal_nchw_dense():
    h, w, c, out = 3, 4, 5, 6
    kernel = rng.standard_normal((h * w * c, out)).astype(np.float32)  # Keras Dense after Flatten (NHWC)
    fmap = rng.standard_normal((c, h, w)).astype(np.float32)
    keras = fmap.transpose(1, 2, 0).reshape(-1) @ kernel
    weight = chain_apply([build("tf_dense"), build({"flatten_order": {"h": h, "w": w, "c": c}})], kernel)
    np.testing.assert_allclose(weight @ fmap.reshape(-1), keras, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("perm,order", [((0, 3, 2, 1), "hwc_to_whc"), ((0, 2, 3, 1), None),
                                        ((0, 1, 3, 2), "hwc_to_cwh")])
def test_flatten_order_any_port_permute(perm, order):
    """A port that permutes its NCHW map before flattening (facenet-pytorch: (0, 3, 2, 1)) needs
    the Keras (h, w, c) features in its own order; (0, 2, 3, 1) is Keras' order: no reorder."""
    torch = pytest.importorskip("torch")
    h, w, c, out = 3, 4, 5, 6
    kernel = rng.standard_normal((h * w * c, out)).astype(np.float32)
    fmap = rng.standard_normal((1, c, h, w)).astype(np.float32)
    keras = fmap[0].transpose(1, 2, 0).reshape(-1) @ kernel
    flatten = [build({"flatten_order": {"h": h, "w": w, "c": c, "order": order}})] if order else []
    chain = [build("tf_dense"), *flatten]
    weight = torch.from_numpy(np.ascontiguousarray(chain_apply(chain, kernel)))
    port = torch.from_numpy(fmap).permute(*perm).reshape(1, -1) @ weight.T
    np.testing.assert_allclose(port[0].numpy(), keras, rtol=1e-5, atol=1e-5)


def test_tf_conv1d_as_2d_runs_like_keras_conv1d():
    """Keras Conv1D (K, I, O) run as torch Conv2d with a (K, 1) kernel over (N, I, L, 1)."""
    torch = pytest.importorskip("torch")
    k, i, o, length = 5, 3, 4, 11
    kernel = rng.standard_normal((k, i, o)).astype(np.float32)
    x = rng.standard_normal((1, i, length)).astype(np.float32)
    ref = torch.nn.functional.conv1d(torch.from_numpy(x), torch.from_numpy(build("tf_conv").apply(kernel).copy()))
    w2 = torch.from_numpy(np.ascontiguousarray(build("tf_conv1d_as_2d").apply(kernel)))
    got = torch.nn.functional.conv2d(torch.from_numpy(x)[..., None], w2)[..., 0]
    np.testing.assert_allclose(got.numpy(), ref.numpy(), rtol=1e-5, atol=1e-5)


def test_split_concat_take_and_bias_pairs():
    x = rng.standard_normal((6, 4)).astype(np.float32)
    parts = build({"split": {"axis": 0, "parts": 3}}).apply(x)
    assert [p.shape for p in parts] == [(2, 4)] * 3
    np.testing.assert_array_equal(build({"concat": 0}).apply(parts), x)
    np.testing.assert_array_equal(build({"take": 1}).apply(parts), x[2:4])
    assert chain_shape([build({"split": {"axis": 1, "sizes": [1, -1]}})], (6, 4), "f4")[0] == [(6, 1), (6, 3)]
    b, z = build("bias_ih_hh").apply(x[0])
    np.testing.assert_array_equal(b, x[0])
    assert not z.any()


def test_keras_gru_bias_reorders_and_refuses_reset_before():
    bias = np.arange(12, dtype=np.float32).reshape(2, 6)  # z z r r h h per row
    ih, hh = build("keras_gru_bias").apply(bias)
    np.testing.assert_array_equal(ih, [2, 3, 0, 1, 4, 5])
    np.testing.assert_array_equal(hh, [8, 9, 6, 7, 10, 11])
    with pytest.raises(MappingError, match="reset_after=False"):
        build("keras_gru_bias", rule="t.yaml:4").shape((6,))


def test_caffe_bn_stat_divides_by_the_scale_factor():
    t = build("caffe_bn_stat")
    mean = np.array([2.0, 4.0], np.float32)
    np.testing.assert_array_equal(t.apply([mean, np.array([2.0], np.float32)]), [1.0, 2.0])
    np.testing.assert_array_equal(t.apply([mean, np.array([0.0], np.float32)]), [0.0, 0.0])
    assert t.shape([(2,), (1,)]) == (2,)


def test_slice_inverse_scatters_into_zeros_and_constant_and_cast():
    x = rng.standard_normal((1001, 4)).astype(np.float32)
    t = build({"slice": {"axis": 0, "start": 1}})
    y = t.apply(x)
    assert y.shape == t.shape(x.shape) == (1000, 4)
    back = t.inverse(x.shape).apply(y)
    assert not back[0].any() and np.array_equal(back[1:], x[1:])
    np.testing.assert_array_equal(build({"constant": 1}).apply(x[:2]), np.ones((2, 4), np.float32))
    c = build({"cast": "float16"})
    assert c.dtype(np.dtype("f4")) == np.float16
    assert c.apply(x).dtype == np.float16 and c.inverse(x.shape).apply(c.apply(x)).dtype == np.float32


@pytest.mark.parametrize("spec,shape,message", [
    ({"permute": [1, 0]}, (2, 3, 4), "needs a 2-d array"),
    ("tf_depthwise", (3, 3, 4), "4-d"),
    ({"reshape": [5, -1]}, (2, 3), "cannot reshape"),
    ({"flatten_order": {"h": 2, "w": 2, "c": 2}}, (4, 9), "h\\*w\\*c"),
    ("tf_conv1d_as_2d", (3, 3, 4, 8), "3-d"),
    ({"gates": {"from": "ifco", "to": "ifco"}}, (10, 3), "does not split"),
    ({"squeeze": {"axis": 0}}, (2, 3), "not 1"),
])
def test_shape_rules_refuse_what_does_not_fit(spec, shape, message):
    with pytest.raises(MappingError, match=message) as e:
        build(spec, rule="m.yaml:7").shape(shape)
    assert "m.yaml:7" in str(e.value) and str(list(shape)) in str(e.value)


def test_unknown_transform_and_bad_arguments_name_the_rule():
    with pytest.raises(MappingError, match="unknown transform 'tf_conf'.*did you mean tf_conv") as e:
        build("tf_conf", rule="m.yaml:3")
    assert "m.yaml:3" in str(e.value)
    with pytest.raises(MappingError, match="bad arguments"):
        build({"flip": {"axes": 1}}, rule="m.yaml:3")
    with pytest.raises(MappingError, match="one-key mapping"):
        build({"flip": 1, "permute": [0]}, rule="m.yaml:3")


def test_registry_documents_every_transform():
    import pathlib

    doc = (pathlib.Path(__file__).resolve().parents[1] / "docs" / "mapping.md").read_text()
    for name in REGISTRY:
        assert f"`{name}`" in doc, f"docs/mapping.md does not describe {name}"


@pytest.fixture(params=["opencv", "numpy"])
def transposer(request, monkeypatch):
    """copy_into's two ways of copying a transposed matrix: cv2.transpose (counted, to show it ran)
    where OpenCV is installed, and the staged numpy copy it falls back to."""
    from converters.mapping import materialise

    if request.param == "numpy":
        monkeypatch.setattr(materialise, "_opencv", False)
        return None
    cv2 = pytest.importorskip("cv2")
    calls = []

    class Counting:
        error = cv2.error

        @staticmethod
        def transpose(src, dst):
            calls.append(src.dtype)
            return cv2.transpose(src, dst)
    monkeypatch.setattr(materialise, "_opencv", Counting)
    return calls


@pytest.mark.parametrize("shape", [(256, 256), (1025, 130), (130, 3000), (65, 65), (3, 200)])
@pytest.mark.parametrize("dtype", ["<f4", ">f4", "<f2", "<f8", "u1"])
def test_transposed_copies_are_exact(shape, dtype, transposer):
    """copy_into's transpose (OpenCV's, or the staged numpy copy: padded buffer, row groups, row
    passes) for whole transposed matrices, offset slices of them and the writer's row chunks, in
    every byte order; the bytes, NaN payloads included, are moved unchanged."""
    from converters.mapping.materialise import contiguous_copy, copy_into

    a = np.random.default_rng(0).standard_normal(shape).astype(dtype)
    bits = np.random.default_rng(1).integers(0, 256, a.nbytes, dtype=np.uint8).view(a.dtype).reshape(shape)
    swapping = 0
    for m in (a, bits):
        views = [m.T, m.T[3:, 1:], m.T[: max(1, m.shape[1] // 3)]]
        for v in views:
            dest = np.empty(v.shape, np.dtype(dtype).newbyteorder("="))
            before = len(transposer or [])
            copy_into(dest, v)
            swapping += len(transposer or []) - before if dest.dtype != v.dtype else 0
            assert dest.astype(v.dtype).tobytes() == np.ascontiguousarray(v).tobytes()
            assert contiguous_copy(v).tobytes() == np.ascontiguousarray(v).tobytes()
    if transposer is not None:  # OpenCV took every matrix wider than a tile, but none to byte-swap
        assert bool(transposer) == (shape[0] > 64) and swapping == 0


def test_opencv_transposes_any_dtype_by_its_size(transposer):
    """bfloat16 (which OpenCV does not know) and int64 go through as same-size unsigned/float types."""
    import ml_dtypes

    from converters.mapping.materialise import copy_into

    rng = np.random.default_rng(2)
    for dtype in (ml_dtypes.bfloat16, np.int64, np.complex64):
        raw = rng.integers(0, 256, 300 * 517 * np.dtype(dtype).itemsize, dtype=np.uint8)
        v = raw.view(dtype).reshape(300, 517).T
        dest = np.empty(v.shape, dtype)
        copy_into(dest, v)
        assert dest.tobytes() == np.ascontiguousarray(v).tobytes()
    if transposer is not None:
        assert len(transposer) == 3
