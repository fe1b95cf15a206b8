"""Build the source models of the MXNet/Gluon mapping tables in mxnet 1.9.1 and save them.

Runs in the mxnet interpreter (.venv-mxnet), never in the project's: tests/test_tables_mxnet.py
calls it through subprocess with an output directory and one or more model names:

    .venv-mxnet/bin/python tests/mxnet_side/make_tables_models.py OUT_DIR resnet50_v1 lstm_bi ...

For every model it writes, into OUT_DIR:

    <name>-symbol.json, <name>-0000.params   HybridBlock.export(): the MXNet "checkpoint" form
                                            (arg:/aux: prefixed flat symbol names + the graph)
    <name>_gluon.params                      Block.save_parameters(): Gluon structural names
    <name>.npz                               x (the fixed input) and y (mxnet's forward output)

Weights are random (fixed seed) and *every* array is randomised, BatchNorm statistics and biases
included: with Gluon's default init (gamma 1, beta 0, mean 0, var 1, bias 0) a table that mixed
up gamma and var, or dropped a bias, would still reproduce the output. A model whose package is
missing (gluoncv) is reported in OUT_DIR/missing.json instead of failing the whole run.
"""
from __future__ import annotations

import json
import os
import sys
import warnings

import numpy as np

warnings.filterwarnings("ignore")
import mxnet as mx  # noqa: E402
from mxnet.gluon import rnn  # noqa: E402
from mxnet.gluon.model_zoo import vision  # noqa: E402

SEED = 20240607
IMAGE = (1, 3, 64, 64)  # global average pooling: any size >= 32 works; 64 keeps the run short


def _resnet50_v1():
    return vision.resnet50_v1(), np.random.RandomState(1).uniform(-1, 1, IMAGE).astype(np.float32)


def _resnet50_v1b():
    from gluoncv.model_zoo import resnet50_v1b  # needs gluoncv in .venv-mxnet

    return resnet50_v1b(pretrained=False), np.random.RandomState(2).uniform(-1, 1, IMAGE).astype(np.float32)


def _lstm_bi():
    """Two stacked bidirectional layers, batch-major input (NTC): batch 2, 5 steps, 6 features."""
    net = rnn.LSTM(hidden_size=7, num_layers=2, layout="NTC", bidirectional=True, input_size=6)
    return net, np.random.RandomState(3).normal(0, 1, (2, 5, 6)).astype(np.float32)


def _lstm_uni():
    """Two stacked one-way layers, time-major input (TNC): 4 steps, batch 3, 5 features."""
    net = rnn.LSTM(hidden_size=9, num_layers=2, layout="TNC", bidirectional=False, input_size=5)
    return net, np.random.RandomState(4).normal(0, 1, (4, 3, 5)).astype(np.float32)


MODELS = {"resnet50_v1": _resnet50_v1, "resnet50_v1b": _resnet50_v1b, "lstm_bi": _lstm_bi, "lstm_uni": _lstm_uni}


def _randomise(net, rng):
    """Give every parameter a random value of a scale that keeps a 50-layer forward finite."""
    for name, p in net.collect_params().items():
        shape = p.shape
        if name.endswith(("_gamma", "_running_var")):
            value = rng.uniform(0.5, 1.5, shape)
        elif name.endswith(("_beta", "_running_mean", "_bias")):
            value = rng.normal(0, 0.1, shape)
        else:  # weights: He-style scale over the fan-in
            fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
            value = rng.normal(0, np.sqrt(1.0 / fan_in), shape)
        p.set_data(mx.nd.array(value.astype(np.float32)))


def build(name, out_dir):
    mx.random.seed(SEED)
    net, x = MODELS[name]()
    net.initialize(mx.init.Xavier())
    net.hybridize()
    net(mx.nd.array(x))  # the first call fixes deferred shapes and records the graph
    _randomise(net, np.random.RandomState(SEED))
    y = net(mx.nd.array(x)).asnumpy()
    prefix = os.path.join(out_dir, name)
    net.export(prefix, epoch=0)
    net.save_parameters(prefix + "_gluon.params")
    np.savez(prefix + ".npz", x=x, y=y)


def main(argv):
    out_dir, names = argv[0], argv[1:] or list(MODELS)
    missing = {}
    for name in names:
        try:
            build(name, out_dir)
        except ImportError as e:
            missing[name] = f"{type(e).__name__}: {e}"
    with open(os.path.join(out_dir, "missing.json"), "w") as fh:
        json.dump(missing, fh)


if __name__ == "__main__":
    main(sys.argv[1:])
