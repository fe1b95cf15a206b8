"""Reader options from the command line and the Python API: typed values, unknown keys rejected.

`--option allow_pickle=false` used to reach the reader as the truthy string "false" (a pickle in
an .npz ran); these tests use a real pickle that touches a marker file and a real ONNX model whose
external data points outside its folder, and check that nothing runs and nothing is read.
"""
import pathlib

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import converters
from converters.cli import main
from converters.cli.args import parse_options, parse_value
from converters.errors import ConvertersError

ROOT = pathlib.Path(__file__).resolve().parents[1]
PNET = ROOT / "fixtures/caffe/mtcnn_pnet/det1.caffemodel"


class _Touch:
    """Unpickling this creates the marker file: proof that pickled code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return pathlib.Path.touch, (pathlib.Path(self.marker),)


@pytest.fixture
def pickle_npz(tmp_path):
    marker = tmp_path / "pickle-ran"
    path = tmp_path / "evil.npz"
    np.savez(path, weight=np.ones(3, np.float32), payload=np.array([_Touch(marker)], dtype=object))
    assert not marker.exists()
    return path, marker


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_values_are_typed():
    assert parse_value("false") is False and parse_value("TRUE") is True
    assert parse_value("12") == 12 and parse_value("-3") == -3 and parse_value("1e-3") == 1e-3
    assert parse_value("deploy.prototxt") == "deploy.prototxt" and parse_value("") == ""
    assert parse_options(["a=false", "b=x=y"]) == {"a": False, "b": "x=y"}
    with pytest.raises(ConvertersError, match="KEY=VALUE"):
        parse_options(["bogus"])
    with pytest.raises(ConvertersError, match="twice"):
        parse_options(["a=1", "a=2"])


@pytest.mark.parametrize("value", ["false", "False", "0"])
def test_allow_pickle_false_runs_no_pickle(pickle_npz, capsys, value):
    path, marker = pickle_npz
    code, out, err = run(capsys, "inspect", path, "--option", f"allow_pickle={value}")
    assert not marker.exists()
    if value == "0":  # an integer is not a bool: refused before the file is opened
        assert code == 2 and "takes true or false" in err
    else:  # False: the reader refuses the object array
        assert code == 2 and "allow_pickle" in err and "Traceback" not in err


def test_allow_pickle_string_refused_by_the_python_api(pickle_npz):
    path, marker = pickle_npz
    with pytest.raises(ConvertersError, match="takes true or false, not 'false'"):
        converters.read(path, allow_pickle="false")
    assert not marker.exists()


def test_the_pickle_fixture_is_real(pickle_npz, capsys):
    """allow_pickle=true does unpickle: the marker appears (so the tests above prove something)."""
    path, marker = pickle_npz
    try:
        with converters.read(path, allow_pickle=True) as f:
            f["payload"].numpy()
    except ConvertersError:  # the unpickled object holds no numbers: refused, but only after it ran
        pass
    assert marker.exists()


def _onnx_with_outside_data(tmp_path):
    secret = tmp_path / "elsewhere" / "secret.bin"
    secret.parent.mkdir()
    secret.write_bytes(np.arange(4, dtype=np.float32).tobytes())
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    w = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[4])
    w.data_location = TensorProto.EXTERNAL
    for k, v in (("location", "../elsewhere/secret.bin"), ("offset", "0"), ("length", "16")):
        entry = w.external_data.add()
        entry.key, entry.value = k, v
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])], [w])
    path = model_dir / "m.onnx"
    onnx.save(helper.make_model(graph), str(path))
    return path


def test_allow_outside_false_reads_nothing_outside(tmp_path, capsys):
    path = _onnx_with_outside_data(tmp_path)
    out_file = tmp_path / "out.npz"
    code, out, err = run(capsys, "inspect", path, "--option", "allow_outside=false", "--json-out", out_file)
    assert code == 2 and "outside the model's directory" in err
    assert not out_file.exists()
    code, out, err = run(capsys, "inspect", path, "--option", "allow_outside=true", "--json", "-")
    assert code == 0 and '"name": "w"' in out  # the file is real: trusted, it reads


def test_misspelt_option_is_named_with_a_suggestion(capsys):
    code, out, err = run(capsys, "inspect", PNET, "--option", "protoxt=deploy.prototxt")
    assert code == 2 and "no option 'protoxt'" in err and "did you mean 'prototxt'" in err
    with pytest.raises(ConvertersError, match="did you mean 'prototxt'"):
        converters.read(PNET, protoxt="x")


@pytest.mark.parametrize("sub", [[], ["verify"], ["inspect"], ["draft", "--target", "converters.models.mtcnn:PNet"]])
def test_option_without_value_exits_2_everywhere(tmp_path, capsys, sub):
    argv = [*sub, PNET, "--option", "bogus"]
    if sub in ([], ["verify"]):
        argv += ["--map", "caffe/mtcnn_pnet"]
    if not sub:
        argv.append(tmp_path / "out.pth")
    code, out, err = run(capsys, *argv)
    assert code == 2 and "KEY=VALUE" in err, err
    assert not (tmp_path / "out.pth").exists()


def test_unknown_option_key_exits_2_for_convert_and_verify(tmp_path, capsys):
    for sub in ([], ["verify"]):
        argv = [*sub, PNET, "--map", "caffe/mtcnn_pnet", "--option", "bogus=1"] + ([] if sub else [tmp_path / "o.pth"])
        code, out, err = run(capsys, *argv)
        assert code == 2 and "no option 'bogus'" in err, (sub, err)
