"""Small MXNet symbol nets for the parity localisation tests, built and saved by mxnet 1.9.1.

Runs in the mxnet interpreter (.venv-mxnet), never in the project's; tests/test_parity_mxnet.py
calls it through subprocess:

    .venv-mxnet/bin/python tests/mxnet_side/make_parity_nets.py OUT_DIR

It writes, into OUT_DIR, two checkpoints (PREFIX-symbol.json + PREFIX-0000.params):

    convbn    data -> conv1 -> bn1 -> relu1 -> conv2 -> bn2 -> relu2 -> pool -> flatten -> fc
              (fix_gamma=False, eps 1e-3: the symbol API's default eps). mxnet's MKLDNN subgraph
              backend fuses each Conv+BN+ReLU, so a tapped conv would return the fused output.
    fixgamma  data -> conv1 -> bn1 (fix_gamma=True, the symbol default) -> relu1 -> fc, with a
              stored gamma that is not 1 (mxnet ignores it at run time)

and convbn_cut-symbol.json: convbn's graph cut after relu1 (a symbol whose head does not reach
conv2, bn2 and fc, whose weights convbn-0000.params still holds).

Every array is random (fixed seed), BatchNorm statistics and biases included.
"""
import os
import sys
import warnings

import numpy as np

warnings.filterwarnings("ignore")
import mxnet as mx  # noqa: E402

SHAPE = (1, 3, 12, 12)


def convbn():
    x = mx.sym.var("data")
    for i, (channels, fix) in enumerate(((6, False), (8, False)), start=1):
        x = mx.sym.Convolution(x, num_filter=channels, kernel=(3, 3), pad=(1, 1), name=f"conv{i}")
        x = mx.sym.BatchNorm(x, fix_gamma=fix, eps=1e-3, name=f"bn{i}")
        x = mx.sym.Activation(x, act_type="relu", name=f"relu{i}")
    x = mx.sym.Pooling(x, kernel=(2, 2), stride=(2, 2), pool_type="max", name="pool")
    x = mx.sym.Flatten(x, name="flatten")
    return mx.sym.FullyConnected(x, num_hidden=5, name="fc")


def fixgamma():
    x = mx.sym.var("data")
    x = mx.sym.Convolution(x, num_filter=4, kernel=(3, 3), pad=(1, 1), name="conv1")
    x = mx.sym.BatchNorm(x, name="bn1")  # fix_gamma=True, eps 1e-3: the defaults
    x = mx.sym.Activation(x, act_type="relu", name="relu1")
    x = mx.sym.Flatten(x, name="flatten")
    return mx.sym.FullyConnected(x, num_hidden=3, name="fc")


def save(sym, prefix, seed):
    rng = np.random.RandomState(seed)
    arg_shapes, _, aux_shapes = sym.infer_shape(data=SHAPE)
    args = {n: mx.nd.array(rng.uniform(0.5, 1.5, s) if n.endswith("gamma") else rng.normal(0, 0.3, s))
            for n, s in zip(sym.list_arguments(), arg_shapes) if n != "data"}
    aux = {n: mx.nd.array(rng.uniform(0.5, 1.5, s) if n.endswith("var") else rng.normal(0, 0.2, s))
           for n, s in zip(sym.list_auxiliary_states(), aux_shapes)}
    mx.model.save_checkpoint(prefix, 0, sym, args, aux)


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    save(convbn(), os.path.join(out, "convbn"), 1)
    save(fixgamma(), os.path.join(out, "fixgamma"), 2)
    convbn().get_internals()["relu1_output"].save(os.path.join(out, "convbn_cut-symbol.json"))


if __name__ == "__main__":
    main()
