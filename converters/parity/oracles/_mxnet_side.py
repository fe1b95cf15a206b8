"""The MXNet oracle's side script: runs inside the interpreter that has mxnet 1.9.1 (numpy<1.24).

mxnet cannot share an environment with TensorFlow or onnx, so the project's process starts this
file with that other interpreter (`--source-python`) and talks to it over pipes: one JSON request
per line on stdin, one JSON answer per line on the original stdout, arrays in .npz files named in
the requests. It imports nothing from the project (the side environment need not have it).

Requests:
    {"cmd": "load", "symbol": PATH, "params": PATH}
        -> {"ok": true, "inputs": [...], "outputs": [...], "layers": [...], "mxnet": VERSION}
    {"cmd": "run", "inputs": NPZ, "names": [input names, same order as a0, a1, ... in NPZ],
     "taps": [layer names], "out": NPZ}
        -> {"ok": true, "names": [outputs then taps, the order of a0, a1, ... in `out`]}
    {"cmd": "quit"}
Failures answer {"ok": false, "error": "...", "traceback": "..."}; the process keeps serving.
"""
import json
import os
import sys
import traceback


def _answer(stream, message):
    stream.write(json.dumps(message) + "\n")
    stream.flush()


def _strip_prefix(name):
    """Checkpoint files (net.export, mx.model.save_checkpoint) prefix names with arg:/aux:."""
    return name.split(":", 1)[1] if name.startswith(("arg:", "aux:")) else name


class Session:
    def __init__(self, mx, np):
        self.mx, self.np = mx, np
        self.sym = None
        self.params = {}

    def load(self, symbol, params):
        mx = self.mx
        self.sym = mx.sym.load(symbol)  # upgrades legacy (pre-NNVM) JSON too
        loaded = mx.nd.load(params) if params else {}
        if isinstance(loaded, list):
            raise ValueError(f"{params} holds an unnamed NDArray list: the oracle needs named parameters")
        self.params = {_strip_prefix(k): v for k, v in loaded.items()}
        nodes = json.loads(self.sym.tojson())["nodes"]
        args = self.sym.list_arguments() + self.sym.list_auxiliary_states()
        inputs = [a for a in self.sym.list_arguments() if a not in self.params]
        missing_aux = [a for a in self.sym.list_auxiliary_states() if a not in self.params]
        if missing_aux:
            raise ValueError(f"the params file lacks auxiliary states {missing_aux[:5]}")
        layers = [n["name"] for n in nodes if n["op"] != "null" and n["name"] not in args]
        unreached = sorted(set(self.params) - set(args))  # weights no head of the symbol computes with
        return {"inputs": inputs, "outputs": self.sym.list_outputs(), "layers": layers,
                "unreached_params": unreached, "mxnet": mx.__version__}

    def _tap_symbol(self, name):
        internals = self.sym.get_internals()
        outputs = internals.list_outputs()
        for candidate in (name, name + "_output", name + "_output0"):
            if candidate in outputs:
                return internals[candidate]
        raise KeyError(f"the symbol has no layer {name!r} to tap")

    def run(self, inputs_npz, names, taps, out_npz):
        mx, np = self.mx, self.np
        data = np.load(inputs_npz)
        feed = {name: data[f"a{i}"] for i, name in enumerate(names)}
        heads = [self.sym] + [self._tap_symbol(t) for t in taps]
        group = mx.sym.Group(heads) if taps else self.sym
        shapes = {k: v.shape for k, v in feed.items()}
        exe = group.simple_bind(mx.cpu(), grad_req="null", **shapes)
        for name, arr in exe.arg_dict.items():
            if name in feed:
                arr[:] = feed[name]
            elif name in self.params:
                arr[:] = self.params[name]
            else:
                raise ValueError(f"no value for the symbol argument {name!r} (not an input, not in the params)")
        for name, arr in exe.aux_dict.items():
            arr[:] = self.params[name]
        results = exe.forward(is_train=False)
        np.savez(out_npz, **{f"a{i}": r.asnumpy() for i, r in enumerate(results)})
        return {"names": self.sym.list_outputs() + list(taps)}


def main():
    protocol = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    sys.stdout = sys.stderr  # anything mxnet prints must not corrupt the protocol stream
    try:
        import mxnet as mx
        import numpy as np
    except Exception as e:  # reported as "framework unavailable in this interpreter"
        _answer(protocol, {"ok": False, "unavailable": True, "error": f"{type(e).__name__}: {e}",
                           "python": sys.executable})
        return
    _answer(protocol, {"ok": True, "ready": True, "mxnet": mx.__version__, "python": sys.executable,
                       "subgraph_backend": os.environ.get("MXNET_SUBGRAPH_BACKEND")})
    session = Session(mx, np)
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            request = json.loads(line)
            cmd = request.get("cmd")
            if cmd == "quit":
                _answer(protocol, {"ok": True})
                return
            if cmd == "load":
                result = session.load(request["symbol"], request.get("params"))
            elif cmd == "run":
                result = session.run(request["inputs"], request["names"], request.get("taps", []),
                                     request["out"])
            else:
                raise ValueError(f"unknown command {cmd!r}")
            _answer(protocol, {"ok": True, **result})
        except Exception as e:
            _answer(protocol, {"ok": False, "error": f"{type(e).__name__}: {e}",
                               "traceback": traceback.format_exc()[-4000:]})


if __name__ == "__main__":
    main()
