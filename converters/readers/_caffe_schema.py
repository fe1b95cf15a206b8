"""The part of caffe.proto the [caffe] reader decodes: field numbers, types and defaults.

Numbers and defaults are BVLC Caffe's `src/caffe/proto/caffe.proto` (the copy used to generate
the test fixtures is fixtures/caffe/proto/caffe.proto); `round_mode` (PoolingParameter field 13)
is from BVLC master, newer than that copy. A field is (number, name, kind, default, repeated):

    kind  "int" (int32/int64/uint32/uint64 varint), "bool", "float", "double", "string",
          ("enum", {number: name}), ("msg", MessageName)

Fields not listed are skipped when decoding (their numbers are reported), so files written by a
forked caffe.proto (SSD, Yolo, ...) stay readable.
"""
from __future__ import annotations

ENGINE = ("enum", {0: "DEFAULT", 1: "CAFFE", 2: "CUDNN"})


def _f(number, name, kind, default=None, repeated=False):
    return (number, name, kind, default, repeated)


MESSAGES: dict[str, list] = {
    "BlobShape": [_f(1, "dim", "int", repeated=True)],
    "FillerParameter": [
        _f(1, "type", "string", "constant"), _f(2, "value", "float", 0.0), _f(3, "min", "float", 0.0),
        _f(4, "max", "float", 1.0), _f(5, "mean", "float", 0.0), _f(6, "std", "float", 1.0),
        _f(7, "sparse", "int", -1),
        _f(8, "variance_norm", ("enum", {0: "FAN_IN", 1: "FAN_OUT", 2: "AVERAGE"}), "FAN_IN")],
    "ConvolutionParameter": [
        _f(1, "num_output", "int", 0), _f(2, "bias_term", "bool", True),
        _f(3, "pad", "int", repeated=True), _f(4, "kernel_size", "int", repeated=True),
        _f(6, "stride", "int", repeated=True), _f(18, "dilation", "int", repeated=True),
        _f(9, "pad_h", "int", 0), _f(10, "pad_w", "int", 0), _f(11, "kernel_h", "int", 0),
        _f(12, "kernel_w", "int", 0), _f(13, "stride_h", "int", 0), _f(14, "stride_w", "int", 0),
        _f(5, "group", "int", 1), _f(7, "weight_filler", ("msg", "FillerParameter")),
        _f(8, "bias_filler", ("msg", "FillerParameter")), _f(15, "engine", ENGINE, "DEFAULT"),
        _f(16, "axis", "int", 1), _f(17, "force_nd_im2col", "bool", False)],
    "PoolingParameter": [
        _f(1, "pool", ("enum", {0: "MAX", 1: "AVE", 2: "STOCHASTIC"}), "MAX"),
        _f(4, "pad", "int", 0), _f(9, "pad_h", "int", 0), _f(10, "pad_w", "int", 0),
        _f(2, "kernel_size", "int", 0), _f(5, "kernel_h", "int", 0), _f(6, "kernel_w", "int", 0),
        _f(3, "stride", "int", 1), _f(7, "stride_h", "int", 0), _f(8, "stride_w", "int", 0),
        _f(11, "engine", ENGINE, "DEFAULT"), _f(12, "global_pooling", "bool", False),
        _f(13, "round_mode", ("enum", {0: "CEIL", 1: "FLOOR"}), "CEIL")],
    "InnerProductParameter": [
        _f(1, "num_output", "int", 0), _f(2, "bias_term", "bool", True),
        _f(3, "weight_filler", ("msg", "FillerParameter")), _f(4, "bias_filler", ("msg", "FillerParameter")),
        _f(5, "axis", "int", 1), _f(6, "transpose", "bool", False)],
    "BatchNormParameter": [
        _f(1, "use_global_stats", "bool", None), _f(2, "moving_average_fraction", "float", 0.999),
        _f(3, "eps", "float", 1e-5)],
    "ScaleParameter": [
        _f(1, "axis", "int", 1), _f(2, "num_axes", "int", 1), _f(3, "filler", ("msg", "FillerParameter")),
        _f(4, "bias_term", "bool", False), _f(5, "bias_filler", ("msg", "FillerParameter"))],
    "BiasParameter": [
        _f(1, "axis", "int", 1), _f(2, "num_axes", "int", 1), _f(3, "filler", ("msg", "FillerParameter"))],
    "PReLUParameter": [
        _f(1, "filler", ("msg", "FillerParameter")), _f(2, "channel_shared", "bool", False)],
    "EltwiseParameter": [
        _f(1, "operation", ("enum", {0: "PROD", 1: "SUM", 2: "MAX"}), "SUM"),
        _f(2, "coeff", "float", repeated=True), _f(3, "stable_prod_grad", "bool", True)],
    "ReLUParameter": [_f(1, "negative_slope", "float", 0.0), _f(2, "engine", ENGINE, "DEFAULT")],
    "SoftmaxParameter": [_f(1, "engine", ENGINE, "DEFAULT"), _f(2, "axis", "int", 1)],
    "ConcatParameter": [_f(2, "axis", "int", 1), _f(1, "concat_dim", "int", 1)],
    "DropoutParameter": [_f(1, "dropout_ratio", "float", 0.5)],
    "FlattenParameter": [_f(1, "axis", "int", 1), _f(2, "end_axis", "int", -1)],
    "LRNParameter": [
        _f(1, "local_size", "int", 5), _f(2, "alpha", "float", 1.0), _f(3, "beta", "float", 0.75),
        _f(4, "norm_region", ("enum", {0: "ACROSS_CHANNELS", 1: "WITHIN_CHANNEL"}), "ACROSS_CHANNELS"),
        _f(5, "k", "float", 1.0), _f(6, "engine", ENGINE, "DEFAULT")],
    "ReshapeParameter": [
        _f(1, "shape", ("msg", "BlobShape")), _f(2, "axis", "int", 0), _f(3, "num_axes", "int", -1)],
    "InputParameter": [_f(1, "shape", ("msg", "BlobShape"), repeated=True)],
    "ELUParameter": [_f(1, "alpha", "float", 1.0)],
    "PowerParameter": [_f(1, "power", "float", 1.0), _f(2, "scale", "float", 1.0), _f(3, "shift", "float", 0.0)],
    "SliceParameter": [_f(3, "axis", "int", 1), _f(2, "slice_point", "int", repeated=True),
                       _f(1, "slice_dim", "int", 1)],
    "CropParameter": [_f(1, "axis", "int", 2), _f(2, "offset", "int", repeated=True)],
    "EmbedParameter": [
        _f(1, "num_output", "int", 0), _f(2, "input_dim", "int", 0), _f(3, "bias_term", "bool", True),
        _f(4, "weight_filler", ("msg", "FillerParameter")), _f(5, "bias_filler", ("msg", "FillerParameter"))],
    "TileParameter": [_f(1, "axis", "int", 1), _f(2, "tiles", "int", 0)],
    "ThresholdParameter": [_f(1, "threshold", "float", 0.0)],
    "PythonParameter": [_f(1, "module", "string", ""), _f(2, "layer", "string", ""),
                        _f(3, "param_str", "string", ""), _f(4, "share_in_parallel", "bool", False)],
    "MVNParameter": [_f(1, "normalize_variance", "bool", True), _f(2, "across_channels", "bool", False),
                     _f(3, "eps", "float", 1e-9)],
    "ArgMaxParameter": [_f(1, "out_max_val", "bool", False), _f(2, "top_k", "int", 1), _f(3, "axis", "int", None)],
    "ParameterParameter": [_f(1, "shape", ("msg", "BlobShape"))],
    "SigmoidParameter": [_f(1, "engine", ENGINE, "DEFAULT")],
    "TanHParameter": [_f(1, "engine", ENGINE, "DEFAULT")],
    "ReductionParameter": [
        _f(1, "operation", ("enum", {1: "SUM", 2: "ASUM", 3: "SUMSQ", 4: "MEAN"}), "SUM"),
        _f(2, "axis", "int", 0), _f(3, "coeff", "float", 1.0)],
    "RecurrentParameter": [
        _f(1, "num_output", "int", 0), _f(2, "weight_filler", ("msg", "FillerParameter")),
        _f(3, "bias_filler", ("msg", "FillerParameter")), _f(4, "debug_info", "bool", False),
        _f(5, "expose_hidden", "bool", False)],
}

# LayerParameter (V2, `layer` = NetParameter field 100): param-message fields.
LAYER_PARAMS = {
    106: ("convolution_param", "ConvolutionParameter"), 121: ("pooling_param", "PoolingParameter"),
    117: ("inner_product_param", "InnerProductParameter"), 139: ("batch_norm_param", "BatchNormParameter"),
    142: ("scale_param", "ScaleParameter"), 141: ("bias_param", "BiasParameter"),
    131: ("prelu_param", "PReLUParameter"), 110: ("eltwise_param", "EltwiseParameter"),
    123: ("relu_param", "ReLUParameter"), 125: ("softmax_param", "SoftmaxParameter"),
    104: ("concat_param", "ConcatParameter"), 108: ("dropout_param", "DropoutParameter"),
    135: ("flatten_param", "FlattenParameter"), 118: ("lrn_param", "LRNParameter"),
    133: ("reshape_param", "ReshapeParameter"), 143: ("input_param", "InputParameter"),
    140: ("elu_param", "ELUParameter"), 122: ("power_param", "PowerParameter"),
    126: ("slice_param", "SliceParameter"), 144: ("crop_param", "CropParameter"),
    137: ("embed_param", "EmbedParameter"), 138: ("tile_param", "TileParameter"),
    128: ("threshold_param", "ThresholdParameter"), 130: ("python_param", "PythonParameter"),
    120: ("mvn_param", "MVNParameter"), 103: ("argmax_param", "ArgMaxParameter"),
    145: ("parameter_param", "ParameterParameter"), 124: ("sigmoid_param", "SigmoidParameter"),
    127: ("tanh_param", "TanHParameter"), 136: ("reduction_param", "ReductionParameter"),
    146: ("recurrent_param", "RecurrentParameter"),
}
# LayerParameter fields that are not param messages (read or deliberately skipped).
LAYER_NAME, LAYER_TYPE, LAYER_BOTTOM, LAYER_TOP, LAYER_BLOBS, LAYER_PHASE = 1, 2, 3, 4, 7, 10
LAYER_KNOWN_OTHER = {5: "loss_weight", 6: "param", 8: "include", 9: "exclude", 11: "propagate_down",
                     100: "transform_param", 101: "loss_param", 102: "accuracy_param", 107: "data_param",
                     109: "dummy_data_param", 112: "hdf5_data_param", 113: "hdf5_output_param",
                     114: "hinge_loss_param", 115: "image_data_param", 116: "infogain_loss_param",
                     119: "memory_data_param", 105: "contrastive_loss_param", 129: "window_data_param",
                     132: "spp_param", 134: "log_param", 111: "exp_param"}

# V1LayerParameter (`layers` = NetParameter field 2).
V1_NAME, V1_TYPE, V1_BOTTOM, V1_TOP, V1_BLOBS, V1_V0_LAYER = 4, 5, 2, 3, 6, 1
# (the same param messages as V2's, at V1's own field numbers)
_MESSAGE_OF = {name: message for name, message in LAYER_PARAMS.values()}
V1_PARAMS = {number: (name, _MESSAGE_OF[name]) for number, name in {
    10: "convolution_param", 19: "pooling_param", 17: "inner_product_param", 24: "eltwise_param",
    30: "relu_param", 39: "softmax_param", 9: "concat_param", 12: "dropout_param", 18: "lrn_param",
    21: "power_param", 31: "slice_param", 25: "threshold_param", 34: "mvn_param", 23: "argmax_param",
    38: "sigmoid_param", 37: "tanh_param",
}.items()}
V1_KNOWN_OTHER = {32: "include", 33: "exclude", 1001: "param", 1002: "blob_share_mode", 7: "blobs_lr",
                  8: "weight_decay", 35: "loss_weight", 27: "accuracy_param", 40: "contrastive_loss_param",
                  11: "data_param", 26: "dummy_data_param", 41: "exp_param", 13: "hdf5_data_param",
                  14: "hdf5_output_param", 29: "hinge_loss_param", 15: "image_data_param",
                  16: "infogain_loss_param", 22: "memory_data_param", 20: "window_data_param",
                  36: "transform_param", 42: "loss_param"}

# V1LayerParameter.LayerType -> the V2 type string Caffe's own upgrade (UpgradeV1LayerType) gives.
V1_TYPES = {
    0: "", 35: "AbsVal", 1: "Accuracy", 30: "ArgMax", 2: "BNLL", 3: "Concat", 37: "ContrastiveLoss",
    4: "Convolution", 5: "Data", 39: "Deconvolution", 6: "Dropout", 32: "DummyData", 7: "EuclideanLoss",
    25: "Eltwise", 38: "Exp", 8: "Flatten", 9: "HDF5Data", 10: "HDF5Output", 28: "HingeLoss",
    11: "Im2col", 12: "ImageData", 13: "InfogainLoss", 14: "InnerProduct", 15: "LRN", 29: "MemoryData",
    16: "MultinomialLogisticLoss", 34: "MVN", 17: "Pooling", 26: "Power", 18: "ReLU", 19: "Sigmoid",
    27: "SigmoidCrossEntropyLoss", 36: "Silence", 20: "Softmax", 21: "SoftmaxWithLoss", 22: "Split",
    33: "Slice", 23: "TanH", 24: "WindowData", 31: "Threshold",
}
V1_TYPE_NAMES = {
    "NONE": 0, "ABSVAL": 35, "ACCURACY": 1, "ARGMAX": 30, "BNLL": 2, "CONCAT": 3, "CONTRASTIVE_LOSS": 37,
    "CONVOLUTION": 4, "DATA": 5, "DECONVOLUTION": 39, "DROPOUT": 6, "DUMMY_DATA": 32, "EUCLIDEAN_LOSS": 7,
    "ELTWISE": 25, "EXP": 38, "FLATTEN": 8, "HDF5_DATA": 9, "HDF5_OUTPUT": 10, "HINGE_LOSS": 28,
    "IM2COL": 11, "IMAGE_DATA": 12, "INFOGAIN_LOSS": 13, "INNER_PRODUCT": 14, "LRN": 15, "MEMORY_DATA": 29,
    "MULTINOMIAL_LOGISTIC_LOSS": 16, "MVN": 34, "POOLING": 17, "POWER": 26, "RELU": 18, "SIGMOID": 19,
    "SIGMOID_CROSS_ENTROPY_LOSS": 27, "SILENCE": 36, "SOFTMAX": 20, "SOFTMAX_LOSS": 21, "SPLIT": 22,
    "SLICE": 33, "TANH": 23, "WINDOW_DATA": 24, "THRESHOLD": 31,
}

# Which param message a layer type reads: its params are filled with defaults even when absent.
TYPE_PARAM = {
    "Convolution": "convolution_param", "Deconvolution": "convolution_param",
    "Pooling": "pooling_param", "InnerProduct": "inner_product_param", "BatchNorm": "batch_norm_param",
    "Scale": "scale_param", "Bias": "bias_param", "PReLU": "prelu_param", "Eltwise": "eltwise_param",
    "ReLU": "relu_param", "Softmax": "softmax_param", "SoftmaxWithLoss": "softmax_param",
    "Concat": "concat_param", "Dropout": "dropout_param", "Flatten": "flatten_param", "LRN": "lrn_param",
    "Reshape": "reshape_param", "Input": "input_param", "ELU": "elu_param", "Power": "power_param",
    "Slice": "slice_param", "Crop": "crop_param", "Embed": "embed_param", "Tile": "tile_param",
    "Threshold": "threshold_param", "Python": "python_param", "MVN": "mvn_param", "ArgMax": "argmax_param",
    "Parameter": "parameter_param", "Sigmoid": "sigmoid_param", "TanH": "tanh_param",
    "Reduction": "reduction_param", "RNN": "recurrent_param", "LSTM": "recurrent_param",
}
PARAM_MESSAGE = {name: msg for name, msg in LAYER_PARAMS.values()}

# NetParameter fields.
NET_NAME, NET_LAYERS_V1, NET_INPUT, NET_INPUT_DIM, NET_INPUT_SHAPE, NET_LAYER = 1, 2, 3, 4, 8, 100
NET_FIELDS = {1: 2, 2: 2, 3: 2, 4: None, 5: 0, 6: 2, 7: 0, 8: 2, 100: 2}  # number -> wire type

# BlobProto fields.
BLOB_NUM, BLOB_CHANNELS, BLOB_HEIGHT, BLOB_WIDTH = 1, 2, 3, 4
BLOB_DATA, BLOB_DIFF, BLOB_SHAPE, BLOB_DOUBLE_DATA, BLOB_DOUBLE_DIFF = 5, 6, 7, 8, 9
