"""The command line a PyTorch user expects (issue #14): one test per convention, in-process
(`converters.cli.main` with capsys) unless a terminal or a fresh process is the point."""
import json
import os
import re
import subprocess
import sys
from importlib.metadata import distribution, entry_points
from pathlib import Path

import numpy as np
import pytest

import converters
from converters.cli import COMMANDS, available, build_parser, main

ROOT = Path(__file__).resolve().parents[1]
PNET = ROOT / "fixtures/caffe/mtcnn_pnet/det1.caffemodel"
TABLE = "caffe/mtcnn_pnet"


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_version_long_and_short(capsys):
    for flag in ("--version", "-v"):
        code, out, err = run(capsys, flag)
        assert code == 0 and out.strip().endswith(converters.__version__), out


def test_unknown_subcommand_is_named_with_a_suggestion(capsys):
    code, out, err = run(capsys, "inpsect", PNET)
    assert code == 2
    assert "unknown subcommand 'inpsect'" in err and "did you mean 'inspect'" in err and "--map" not in err


def test_help_lists_subcommands_and_the_conversion_options(capsys):
    code, out, err = run(capsys, "--help")
    assert code == 0
    for name in available():
        assert re.search(rf"^\s+{name}\s", out, re.M), name
    for flag in ("--map", "--allow-unused", "--allow-missing", "--dry-run", "--verify", "--report", "--option"):
        assert flag in out, flag
    assert run(capsys)[0] == 2  # no arguments at all: the help, and a usage error


def test_every_subcommand_has_help_json_and_quiet():
    assert set(COMMANDS) >= {"convert", "inspect", "maps", "verify", "reference", "diff", "draft"}
    for name in available():
        text = build_parser("convert", only=name).commands[name].format_help()
        assert "--json" in text and "-q, --quiet" in text, name


def test_unknown_option_is_rejected_by_every_subcommand(tmp_path, capsys):
    """Each with its required arguments given, so the unknown flag is what argparse refuses."""
    valid = {"convert": [PNET, tmp_path / "o.pth", "--map", TABLE], "inspect": [PNET], "maps": [],
             "verify": [PNET, "--map", TABLE], "reference": [PNET, tmp_path / "r.npz", "--map", TABLE],
             "diff": [PNET, PNET], "draft": [PNET, "--target", "converters.models.mtcnn:PNet"],
             "port": [PNET, "-o", tmp_path / "port"], "batch": [tmp_path / "jobs.yaml"]}
    for name in available():
        with pytest.raises(SystemExit) as e:
            main([name, *map(str, valid.get(name, [])), "--no-such-flag"])
        assert e.value.code == 2, name
        err = capsys.readouterr().err
        assert name not in valid or "unrecognized arguments: --no-such-flag" in err, (name, err)
    assert not any(tmp_path.iterdir())


def test_report_dash_writes_json_to_stdout(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, "--from", "caffe", "--map", TABLE, PNET, tmp_path / "p.pth", "--report", "-")
    assert code == 0 and not (tmp_path / "-").exists()
    report = json.loads(out)  # stdout holds the JSON alone; the summary went to stderr
    assert report["ok"] is True and len(report["assignments"]) == 13, report.keys()
    assert "wrote" in err
    code, out, err = run(capsys, "--from", "caffe", "--map", TABLE, PNET, tmp_path / "p.pth", "--force", "--json",
                         "--verify")
    assert code == 0 and json.loads(out)["ok"] is True and "parity PASS" in err  # the verdict stays off stdout


def test_json_and_quiet_on_inspect_maps_and_diff(tmp_path, capsys):
    code, out, err = run(capsys, "inspect", PNET, "-q")
    assert code == 0 and out.splitlines() == [out.splitlines()[-1]] and out.startswith("13 arrays")
    code, out, err = run(capsys, "maps", "--json")
    names = [t["name"] for t in json.loads(out)]
    assert code == 0 and TABLE in names
    code, out, err = run(capsys, "maps", "-q")
    assert out.split() == names
    run(capsys, "--from", "caffe", "--map", TABLE, PNET, tmp_path / "p.safetensors", "-q")
    code, out, err = run(capsys, "diff", PNET, tmp_path / "p.safetensors", "-q")
    assert code == 1 and len(out.strip().splitlines()) == 1  # different names: one verdict line
    code, out, err = run(capsys, "diff", tmp_path / "p.safetensors", tmp_path / "p.safetensors", "--json")
    assert code == 0 and json.loads(out)["compared"] == 13


def test_quiet_conversion_prints_nothing(tmp_path, capsys):
    code, out, err = run(capsys, "--from", "caffe", "--map", TABLE, PNET, tmp_path / "p.pth", "-q")
    assert code == 0 and out == "" and err == "" and (tmp_path / "p.pth").is_file()


def test_target_module_in_the_current_directory(tmp_path, capsys, monkeypatch):
    """`convert --target mymod:Net` finds ./mymod.py, as `python -m converters` does (the console
    script's sys.path starts with its bin directory, not the current one)."""
    (tmp_path / "mymod_cli_target.py").write_text(
        "from converters.models.mtcnn import PNet\n\nclass Net(PNet):\n    pass\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", os.getcwd(), str(tmp_path))])
    code, out, err = run(capsys, "--from", "caffe", "--map", TABLE, PNET, "out.pth", "--target", "mymod_cli_target:Net")
    assert code == 0, err
    import torch

    from converters.models.mtcnn import PNet

    PNet().load_state_dict(torch.load(tmp_path / "out.pth", weights_only=True))


def test_output_folder_is_created_and_removed_on_failure(tmp_path, capsys):
    code, out, err = run(capsys, "--from", "caffe", "--map", TABLE, PNET, tmp_path / "new/dir/p.pth", "-q")
    assert code == 0 and (tmp_path / "new/dir/p.pth").is_file()
    code, out, err = run(capsys, "--from", "caffe", "--map", "keras/lstm", PNET, tmp_path / "gone/p.pth")
    assert code == 2 and not (tmp_path / "gone").exists()


@pytest.mark.parametrize("ext", [".pth", ".safetensors"])
def test_inspect_shows_the_provenance_of_our_outputs(tmp_path, capsys, ext):
    out_file = tmp_path / f"p{ext}"
    assert run(capsys, "--from", "caffe", "--map", TABLE, PNET, out_file, "-q")[0] == 0
    code, out, err = run(capsys, "inspect", out_file)
    line = out.splitlines()[1]
    from converters.provenance import sha256_files

    assert line.startswith("written by converters ") and "source_file det1.caffemodel" in line
    assert f"source_sha256 {sha256_files([PNET])}" in line and "mapping mtcnn_pnet.yaml" in line


def test_array_file_has_a_notebook_view(tmp_path):
    np.savez(tmp_path / "w.npz", **{"a<b": np.zeros((2, 3), np.float32)},
             **{f"x{i}": np.zeros(1, np.int8) for i in range(60)})
    with converters.read(tmp_path / "w.npz") as f:
        page = f._repr_html_()
    assert "<table>" in page and "<code>a&lt;b</code>" in page and "2x3" in page and "float32" in page
    assert "... and 11 more arrays" in page  # 61 arrays, the first 50 shown


def test_html_report_is_a_standalone_styled_page(tmp_path, capsys):
    pytest.importorskip("cv2")
    page = tmp_path / "r.html"
    code, out, err = run(capsys, "verify", PNET, "--map", TABLE, "--html", page)
    assert code == 0
    text = page.read_text()
    assert text.startswith("<!DOCTYPE html>") and "<meta charset=\"utf-8\">" in text and "<style>" in text
    assert "<title>parity PASS" in text and "<table" in text and text.rstrip().endswith("</html>")
    code, out, err = run(capsys, "verify", PNET, "--map", TABLE, "--html", "-")
    assert code == 0 and out.startswith("<!DOCTYPE html>")


def test_one_table_validator_always_on(tmp_path):
    """jsonschema is a core dependency and the one validator: `channels: RBG` is always refused."""
    requires = distribution("weightport").requires
    core = [r for r in requires if "extra ==" not in r]
    assert any(r.startswith("jsonschema") for r in core) and any(r.startswith("tqdm") for r in core), core
    from converters.errors import MappingError
    from converters.mapping import spec

    bad = tmp_path / "t.yaml"
    bad.write_text("source: caffe\ninput: {layout: NCHW, channels: RBG}\nrules: []\n")
    with pytest.raises(MappingError, match="RBG"):
        spec.load(bad)


def test_distribution_name_and_second_script():
    scripts = {e.name: e.value for e in entry_points(group="console_scripts")}
    assert scripts.get("weightport") == "converters.cli:main" and scripts.get("convert") == "converters.cli:main"
    assert distribution("weightport").metadata["Name"] == "weightport"


def test_plugin_import_is_light():
    """The pytest11 plugin is imported by every pytest run: it must not pull in numpy or yaml."""
    code = ("import time, sys, pytest; t = time.perf_counter(); import converters.testing; "
            "print(time.perf_counter() - t, 'numpy' in sys.modules, 'yaml' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    seconds, numpy_loaded, yaml_loaded = r.stdout.split()
    assert (numpy_loaded, yaml_loaded) == ("False", "False"), r.stdout
    assert float(seconds) < 0.15, seconds  # measured 0.02 s (0.3 s before: numpy through converters.arrays)


def test_readme_main_job_writes_into_out_and_ci_runs_it():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", readme, re.S)
    main_job = blocks[0].strip()
    assert " out/pnet.pth " in main_job and main_job.startswith("./scripts/setup.sh && .venv/bin/weightport ")
    ci = (ROOT / ".ci/run").read_text()
    assert main_job.split(" && ", 1)[1] in ci and blocks[1].strip().split(" && ", 1)[1] in ci
    assert "/out/" in (ROOT / ".gitignore").read_text().split()


@pytest.mark.heavy
def test_progress_bar_on_a_terminal_only(tmp_path):
    """A conversion shows a tqdm bar when stderr is a terminal (`script` gives it a pty), none when piped."""
    out = tmp_path / "p.pth"
    cmd = [sys.executable, "-m", "converters", "--from", "caffe", "--map", TABLE, str(PNET), str(out)]
    # a terminal 100 columns wide (script's pty has none set, and tqdm draws nothing in 0 columns)
    tty = subprocess.run(["script", "-q", "-e", "-c", "stty cols 100 rows 40; " + " ".join(map(str, cmd)), os.devnull],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert tty.returncode == 0 and "converting:" in tty.stdout and "tensor" in tty.stdout, tty.stdout
    verify = [sys.executable, "-m", "converters", "verify", str(PNET), "--map", TABLE]
    tty = subprocess.run(["script", "-q", "-e", "-c", "stty cols 100 rows 40; " + " ".join(verify), os.devnull],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert tty.returncode == 0 and "verifying" in tty.stdout and "parity PASS" in tty.stdout, tty.stdout


def test_no_progress_when_not_a_terminal(tmp_path, capsys):
    """Captured output (not a terminal) gets no bar and no activity line."""
    code, out, err = run(capsys, "--from", "caffe", "--map", TABLE, PNET, tmp_path / "p.pth", "--verify")
    assert code == 0 and "converting:" not in out + err and "verifying" not in out + err


def test_library_modules_do_not_import_the_cli():
    """One direction only: converters/cli/ (and each subcommand module) imports the library."""
    cli_modules = {ROOT / "converters" / m.replace("converters.", "").replace(".", "/") for m in COMMANDS.values()}
    pattern = re.compile(r"^\s*(from\s+(\.+cli\b|converters\.cli\b)|import\s+converters\.cli\b"
                         r"|from\s+\.\s+import\s+cli\b)", re.M)
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "converters").rglob("*.py")
                 if "cli" not in p.relative_to(ROOT / "converters").parts[:1] and p.with_suffix("") not in cli_modules
                 and p.name != "__main__.py" and pattern.search(p.read_text())]
    assert not offenders, offenders


def _partials(folder, written=False):
    """The `.partial` temporaries in folder; written=True: only those the writer has put bytes in."""
    out = []
    for p in folder.iterdir():
        try:
            if p.name.endswith(".partial") and (not written or p.stat().st_size > 0):
                out.append(p.name)
        except FileNotFoundError:  # renamed over the output meanwhile
            pass
    return sorted(out)


@pytest.mark.parametrize("name", ["SIGTERM", "SIGHUP"])
def test_terminated_mid_write_leaves_no_partial_and_exits_128_plus_signal(tmp_path, name):
    """A real conversion (64 MiB from an .npz, written as .pth) in a fresh process, caught
    mid-write: frozen (SIGSTOP) as soon as its `.partial` holds bytes (so the writer is inside
    its write, past creating the file), checked to be still writing, then sent the signal and
    thawed. If the write had already finished when the process froze, the case runs again on a
    fresh output."""
    import signal
    import time

    sig = getattr(signal, name, None)
    if sig is None:
        pytest.skip(f"no {name} on this platform")
    src = tmp_path / "big.npz"
    np.savez(src, **{f"layer{i}.weight": np.full((512, 256), i, np.float32) for i in range(128)})
    table = tmp_path / "t.yaml"
    table.write_text("source: numpy\nrules:\n  - from: '(?P<n>.+)'\n    to: '{n}'\n")
    for attempt in range(3):
        out = tmp_path / f"out{attempt}.pth"
        proc = subprocess.Popen([sys.executable, "-m", "converters", "--from", "numpy", "--map", str(table),
                                 str(src), str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while not _partials(tmp_path, written=True) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.0005)
        proc.send_signal(signal.SIGSTOP)
        mid_write = bool(_partials(tmp_path, written=True)) and not out.exists() and proc.poll() is None
        if mid_write:
            proc.send_signal(sig)
        proc.send_signal(signal.SIGCONT)
        _, err = proc.communicate(timeout=120)
        if mid_write:
            break
    else:
        pytest.fail("the conversion never stayed in its write long enough to be caught")
    assert proc.returncode == 128 + sig, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].endswith(f": terminated by {name}"), err  # one line, no traceback
    assert _partials(tmp_path) == [] and not out.exists()


def test_signal_handlers_are_restored_after_a_command(capsys):
    import signal

    before = signal.getsignal(signal.SIGTERM)
    assert run(capsys, "maps")[0] == 0
    assert signal.getsignal(signal.SIGTERM) is before


def test_json_never_swallows_a_source_path(tmp_path, capsys):
    """`--json` takes no value: the word after it stays a positional (the source here), the old
    spelling of a JSON path is named, and `--json=PATH`/`--json-out PATH` write files."""
    code, out, err = run(capsys, "inspect", "--json", PNET)
    assert code == 0 and [a["name"] for a in json.loads(out)][0] == "conv1/0", err
    out_file = tmp_path / "p.pth"
    code, out, err = run(capsys, "--from", "caffe", "--map", TABLE, "--json", PNET, out_file)
    assert code == 0 and json.loads(out)["ok"] is True and out_file.exists(), err
    for how in (["--json=" + str(tmp_path / "a.json")], ["--json-out", tmp_path / "a.json"]):
        (tmp_path / "a.json").unlink(missing_ok=True)
        code, out, err = run(capsys, "inspect", PNET, *how)
        assert code == 0 and out == "" and len(json.loads((tmp_path / "a.json").read_text())) == 13, how
    code, out, err = run(capsys, "inspect", PNET, "--json=" + str(tmp_path / "a.json"))  # a JSON file: replaced
    assert code == 0
    code, out, err = run(capsys, "inspect", PNET, "--json", "-")
    assert code == 0 and json.loads(out)
    code, out, err = run(capsys, "inspect", PNET, "--json", tmp_path / "new.json")
    assert code == 2 and "--json takes no value" in err and f"--json={tmp_path / 'new.json'}" in err
    assert not (tmp_path / "new.json").exists()
    code, out, err = run(capsys, "inspect", PNET, "--json=")
    assert code == 2 and "needs a PATH" in err


@pytest.mark.parametrize("victim", ["input", "foreign"])
def test_json_output_never_overwrites_an_input(tmp_path, capsys, victim):
    """The JSON path is the source itself, or an existing file that is not JSON: refused, untouched."""
    source = tmp_path / "det1.caffemodel"
    source.write_bytes(PNET.read_bytes())
    target = source if victim == "input" else _earlier_conversion(tmp_path)
    before = target.read_bytes()
    code, out, err = run(capsys, "inspect", source, f"--json={target}")
    assert code == 2 and ("also an input" if victim == "input" else "is not JSON") in err, err
    assert target.read_bytes() == before
    code, out, err = run(capsys, "inspect", source, "--json-out", target)
    assert code == 2 and target.read_bytes() == before


def _earlier_conversion(tmp_path):
    """A weight file that is not one of the command's inputs (an earlier conversion)."""
    path = tmp_path / "earlier.pth"
    assert main(["--from", "caffe", "--map", TABLE, str(PNET), str(path), "-q"]) == 0
    return path


def test_every_writing_command_turns_sigterm_into_a_clean_stop():
    """SIGTERM raises in the CLI's commands (batch too: it cancels its pool, tests/test_batch.py)."""
    for name, raises in (("convert", True), ("port", True), ("batch", True)):
        if name in available():
            p = build_parser("convert", only=name).commands[name]
            assert p.get_default("_raise_on_term") is raises, name


def test_an_internal_error_is_one_line_exit_3_unless_the_traceback_is_asked_for(monkeypatch, capsys):
    """A bug (an exception that is not a ConvertersError) gives one line naming it and where,
    exit 3, no traceback; CONVERTERS_TRACEBACK=1 re-raises it."""
    from converters.cli import main
    from converters.readers import caffe

    def broken(path, **options):
        raise AttributeError("'_Bundle' object has no attribute 'shard_ids'")

    monkeypatch.setattr(caffe, "open", broken)
    monkeypatch.delenv("CONVERTERS_TRACEBACK", raising=False)
    pnet = str(Path(__file__).resolve().parents[1] / "fixtures/caffe/mtcnn_pnet/det1.caffemodel")
    assert main(["inspect", pnet]) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "internal error: AttributeError" in err and "shard_ids" in err
    assert "(at converters/readers/__init__.py:" in err and "Traceback" not in err  # the deepest frame of ours
    monkeypatch.setenv("CONVERTERS_TRACEBACK", "1")
    with pytest.raises(AttributeError, match="shard_ids"):
        main(["inspect", pnet])
