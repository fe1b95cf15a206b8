"""Oracles: one per source framework, behind `base.Oracle`. Registry: `ORACLES` name -> module."""
ORACLES = {
    "onnx": "converters.parity.oracles.onnx_oracle",
    "keras": "converters.parity.oracles.keras_oracle",
    "tensorflow": "converters.parity.oracles.tf_oracle",
    "caffe": "converters.parity.oracles.caffe_oracle",
    "mxnet": "converters.parity.oracles.mxnet_oracle",
    "gluon": "converters.parity.oracles.mxnet_oracle",
    "reference": "converters.parity.oracles.reference",
}
