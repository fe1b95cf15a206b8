"""The evidence a draft weighs: normalised names, layer kinds and shape compatibility under each
framework's layout presets.

Nothing here decides a match; every function returns a fact (a token list, a kind, the transform
chains that would make a source array fit a target tensor) that `match.py` combines and records.
"""
from __future__ import annotations

import re

import numpy as np

from .. import frameworks
from ..errors import ConvertersError
from ..mapping import transforms as T

# ---- names --------------------------------------------------------------------------------------

# A tensor's last name component, normalised to PyTorch's word for the same thing.
TENSOR_WORDS = {
    "kernel": "weight", "weights": "weight", "gamma": "weight", "alpha": "weight", "scale": "weight",
    "w": "weight", "depthwise_kernel": "weight", "embeddings": "weight",
    "beta": "bias", "biases": "bias", "b": "bias",
    "moving_mean": "running_mean", "mean": "running_mean",
    "moving_variance": "running_var", "moving_var": "running_var", "variance": "running_var", "var": "running_var",
}

# Layer-name words that mean the same layer kind in different frameworks.
_SYNONYMS = {"batchnorm": "bn", "batchnormalization": "bn", "norm": "bn", "convolution": "conv",
             "dense": "fc", "linear": "fc", "innerproduct": "fc", "fullyconnected": "fc", "leakyrelu": "prelu"}
# Words that carry no identity: framework scaffolding around a layer's own name.
_NOISE = {"fwd", "vars", "cell", "lstm_cell", "gru_cell", "layer_with_weights", "attributes", "variable_value",
          "arg", "aux", "model", "weights", "h5"}


def tokens(name: str) -> list[str]:
    """Lower-case words and numbers of a layer or module name: 'conv4-1' and 'conv4_1' -> conv, 4, 1."""
    out = []
    for part in re.split(r"[^0-9a-zA-Z]+", name):
        for t in re.findall(r"[a-zA-Z]+|\d+", part):
            t = t.lower()
            t = _SYNONYMS.get(t, t)
            if t and t not in _NOISE:
                out.append(str(int(t)) if t.isdigit() else t)
    return out


def name_similarity(source_layer: str, target_module: str) -> float:
    """1.0 when the normalised names are the same or one is the other behind a framework prefix
    (resnetv10_stage1_conv0 vs stage1.conv0), else the share of common tokens (0..0.9)."""
    a, b = tokens(source_layer), tokens(target_module)
    if not a or not b:
        return 0.0
    if a == b or (len(b) >= 2 and a[-len(b):] == b) or (len(a) >= 2 and b[-len(a):] == a):
        return 1.0
    common = len(set(a) & set(b))
    return 0.9 * common / max(len(set(a) | set(b)), 1)


def names_identify(source_layer: str, target_module: str) -> bool:
    """Names strong enough to decide a pair before any order: the same normalised tokens, or one
    ending with the other where the shorter has >= 3 tokens and at least half the longer's
    (resnetv10_stage1_conv0 ~ stage1.conv0, but not resnetv10_stage1_batchnorm1 ~ bn1)."""
    a, b = tokens(source_layer), tokens(target_module)
    if not a or not b:
        return False
    if a == b:
        return True
    short, long_ = (a, b) if len(a) <= len(b) else (b, a)
    return len(short) >= 3 and 2 * len(short) >= len(long_) and long_[-len(short):] == short


def tensor_word(name: str) -> str:
    """The normalised last component of an array name: 'bn/moving_variance' -> running_var."""
    last = re.split(r"[/.:]", name.removesuffix(":0"))
    last = [p for p in last if p and p not in ("ATTRIBUTES", "VARIABLE_VALUE")]
    word = last[-1].lower() if last else name.lower()
    for key in sorted(TENSOR_WORDS, key=len, reverse=True):  # 'conv0_weight' style (MXNet) too
        if word == key or word.endswith("_" + key):
            return TENSOR_WORDS[key]
    for key in ("weight", "bias", "running_mean", "running_var"):
        if word == key or word.endswith("_" + key):
            return key
    return word


def role_of(handle) -> str | None:
    """The array's role: the reader's when it gave one, else from its name."""
    role = handle.meta.get("role")
    if role in (None, "other"):
        word = tensor_word(handle.name)
        return word if word in ("weight", "bias", "running_mean", "running_var") else role
    return role


# ---- kinds --------------------------------------------------------------------------------------

_SOURCE_KINDS = {
    "conv": ("Convolution", "Conv1D", "Conv2D", "Conv3D", "Conv", "Conv2d", "Deconvolution", "Conv2DTranspose",
             "ConvTranspose"),
    "depthwise": ("DepthwiseConv2D", "DepthwiseConv1D"),
    "separable": ("SeparableConv2D", "SeparableConv1D"),
    "dense": ("InnerProduct", "Dense", "FullyConnected", "Gemm", "MatMul", "Linear"),
    "bn": ("BatchNorm", "BatchNormalization", "FusedBatchNorm", "FusedBatchNormV3", "SyncBatchNorm"),
    "scale": ("Scale",),
    "prelu": ("PReLU", "LeakyReLU"),
    "lstm": ("LSTM", "CuDNNLSTM"),
    "gru": ("GRU", "CuDNNGRU"),
    "embedding": ("Embedding", "Gather"),
    "normalize": ("Normalize",),  # SSD's L2 normalisation with a learned per-channel scale (Caffe)
}
SOURCE_KIND = {t: k for k, types in _SOURCE_KINDS.items() for t in types}

# Which target kinds a source kind may fill. A depthwise source fills a grouped conv.
# A separable conv fills a target module made of a depthwise and a pointwise conv; a Normalize
# layer's scale a module of a kind the draft does not know (its pairs are never confident).
COMPATIBLE = {"conv": {"conv"}, "depthwise": {"conv"}, "dense": {"dense"}, "bn": {"bn"}, "prelu": {"prelu"},
              "lstm": {"lstm"}, "gru": {"gru"}, "rnn": {"rnn"}, "embedding": {"embedding"},
              "separable": {"separable"}, "normalize": {"other"}, "tf1_lstm": {"lstm"}}


def source_kind(layer_type: str | None, handles) -> str:
    """The kind of a source layer, from its type, else from its arrays' roles and shapes (Gluon
    save_parameters files record no types)."""
    if layer_type in SOURCE_KIND:
        return SOURCE_KIND[layer_type]
    roles = {role_of(h) for h in handles}
    if roles & {"running_mean", "running_var"} or any(tensor_word(h.name) == "weight" and
                                                     h.name.rsplit(".", 1)[-1].rsplit("_", 1)[-1] == "gamma"
                                                     for h in handles):
        return "bn"
    weights = [h for h in handles if role_of(h) == "weight"]
    if weights:
        w = weights[0]
        last = re.split(r"[/._]", w.name)[-1].lower()
        if last == "alpha" or (w.ndim == 1 and len(handles) == 1):
            return "prelu"
        if w.ndim >= 3:
            return "conv"
        if w.ndim == 2:
            return "dense"
    return "other"


_TF1_CELL = re.compile(r"(?:^|/)(?:basic_)?lstm_cell(?:_\d+)?$|(?:^|/)LSTMCell$")


def tf1_lstm_cell(layer: str, layer_type: str | None, handles) -> bool:
    """A TF1 LSTMCell / BasicLSTMCell / LSTMBlockCell scope (`rnn/lstm_cell`): one kernel
    (in + H, 4H) over [x, h] and one bias (4H), no recurrent_kernel, peepholes or projection. The
    scope name is the evidence: the arrays alone look like a dense layer with 4H outputs."""
    if layer_type in SOURCE_KIND or not _TF1_CELL.search(layer or ""):
        return False
    by_role = {role_of(h): h for h in handles}
    k, b = by_role.get("weight"), by_role.get("bias")
    return (len(handles) == 2 and k is not None and b is not None and k.ndim == 2 and b.ndim == 1
            and k.shape[1] % 4 == 0 and k.shape[0] > k.shape[1] // 4 and b.shape[0] == k.shape[1])


def target_kind(module) -> str:
    from torch import nn

    if isinstance(module, nn.modules.conv._ConvNd):
        return "conv"
    if isinstance(module, nn.Linear):
        return "dense"
    if isinstance(module, nn.modules.batchnorm._NormBase):
        return "bn"
    if isinstance(module, nn.PReLU):
        return "prelu"
    if isinstance(module, (nn.LSTM, nn.LSTMCell)):
        return "lstm"
    if isinstance(module, (nn.GRU, nn.GRUCell)):
        return "gru"
    if isinstance(module, nn.RNN):
        return "rnn"
    if isinstance(module, nn.Embedding):
        return "embedding"
    return "other"


# ---- layouts and shapes -------------------------------------------------------------------------

NHWC_FRAMEWORKS = frameworks.NHWC_FRAMEWORKS  # channels-last sources (converters/frameworks.py)


def layout_presets(handle, framework: str, kind: str, target_module=None) -> list[tuple[list, str]]:
    """Transform chains, most likely first, that bring a source weight into PyTorch's layout, with
    the reason for each. The caller keeps the first whose output shape equals the target's."""
    layout = handle.meta.get("layout")
    nhwc = framework in NHWC_FRAMEWORKS
    out: list[tuple[list, str]] = []
    if layout in ("HWCM",) or (kind == "depthwise" and handle.ndim == 4 and nhwc):
        out.append((["tf_depthwise"], "depthwise kernel (H, W, C, M) -> (C*M, 1, H, W) for groups=C"))
    if layout in ("HWIO", "KIO", "DHWIO") or (layout is None and nhwc and kind == "conv" and handle.ndim >= 3):
        out.append((["tf_conv"], f"{layout or 'TF'} kernel -> O, I, spatial (PyTorch)"))
        if handle.ndim == 3:
            out.append((["tf_conv1d_as_2d"], "Conv1D kernel (K, I, O) -> Conv2d (O, I, K, 1): the port runs the "
                                             "sequence as a width-1 image"))
            out.append(([{"tf_conv1d_as_2d": "1k"}], "Conv1D kernel (K, I, O) -> Conv2d (O, I, 1, K): the port runs "
                                                     "the sequence as a height-1 image"))
    if layout in ("OIW",) and handle.ndim == 3:
        out.append(([{"unsqueeze": 3}], "Conv1d weight (O, I, K) -> Conv2d (O, I, K, 1)"))
    if kind == "prelu" and handle.ndim > 1:
        out.append(([{"reshape": [-1]}], f"PReLU slopes {list(handle.shape)} (one per channel) -> (C,)"))
    if layout == "IO" or (layout is None and nhwc and kind == "dense" and handle.ndim == 2):
        out.append((["tf_dense"], "dense kernel (in, out) -> (out, in)"))
    out.append(([], "same layout"))
    return out


def transformed_shape(chain: list, shape) -> tuple | None:
    """The shape `chain` (YAML transform specs) makes of `shape`, or None if it does not apply."""
    try:
        built = [T.build(t) for t in chain]
        s, _ = T.chain_shape(built, tuple(shape), np.dtype(np.float32))
    except ConvertersError:
        return None
    return tuple(s) if not isinstance(s, list) else [tuple(x) for x in s]


def fit(handle, framework: str, kind: str, target_shape) -> tuple[list, str] | None:
    """The first layout preset that turns the array into the target's shape, or a unique axis
    permutation when no preset applies (reported as such: weaker evidence)."""
    for chain, why in layout_presets(handle, framework, kind):
        if transformed_shape(chain, handle.shape) == tuple(target_shape):
            return chain, why
    if handle.ndim >= 2 and sorted(handle.shape) == sorted(target_shape):
        import itertools

        perms = {p for p in itertools.permutations(range(handle.ndim))
                 if tuple(handle.shape[i] for i in p) == tuple(target_shape)}
        if len(perms) == 1:
            p = perms.pop()
            return [{"permute": list(p)}], "the only axis permutation that fits (no layout preset did)"
    return None


def looks_bgr_first_conv(handle, framework: str, position: int) -> bool:
    """A first convolution over 3 channels from a framework whose models are usually fed OpenCV's
    BGR images: the weights cannot tell the channel order, only the user can."""
    return position == 0 and handle.ndim == 4 and framework in ("caffe", "mxnet", "gluon") and (
        handle.shape[1] == 3)
