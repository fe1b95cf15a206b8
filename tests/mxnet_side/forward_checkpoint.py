"""Run an MXNet checkpoint (prefix-symbol.json + prefix-EPOCH.params) forward, in the mxnet venv.

usage: python forward_checkpoint.py PREFIX EPOCH INPUTS.npz OUTPUTS.npz
INPUTS.npz holds `data`; OUTPUTS.npz gets out0, out1, ... in the symbol's output order.
"""
import sys

import mxnet as mx
import numpy as np

prefix, epoch, inputs, outputs = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
sym, args, auxs = mx.model.load_checkpoint(prefix, epoch)
x = np.load(inputs)["data"]
exe = sym.simple_bind(mx.cpu(), data=x.shape, grad_req="null")
for name, arr in args.items():
    if name in exe.arg_dict:
        exe.arg_dict[name][:] = arr
for name, arr in auxs.items():
    exe.aux_dict[name][:] = arr
exe.arg_dict["data"][:] = x
outs = exe.forward(is_train=False)
np.savez(outputs, **{f"out{i}": o.asnumpy() for i, o in enumerate(outs)})
