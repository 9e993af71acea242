"""The console scripts: help texts, exit codes, one-line errors without tracebacks."""
import subprocess
import sys

import pytest

COMMANDS = ["kits_convert", "kits_plan_and_preprocess", "kits_train", "kits_predict",
            "kits_evaluate", "kits_demo", "kits_overlay", "kits_crossval", "kits_ensemble", "kits_export",
            "kits_inspect"]


def run(*args, cwd=None):
    code = "import sys; from kitsseg import cli; sys.exit(cli.{}(sys.argv[1:]))"
    name = args[0].replace("kits_", "") + "_main"
    return subprocess.run([sys.executable, "-c", code.format(name), *args[1:]], cwd=cwd,
                          capture_output=True, text=True)


@pytest.mark.parametrize("command", COMMANDS)
def test_help(command):
    result = run(command, "--help")
    assert result.returncode == 0
    assert "--quiet" in result.stdout or "{kits,phantom}" in result.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_version(command):
    import kitsseg

    result = run(command, "--version")
    assert result.returncode == 0 and result.stdout.strip().endswith(f" {kitsseg.__version__}")
    assert kitsseg.__version__ == __import__("importlib.metadata").metadata.version("kitsseg")


def test_convert_phantom_then_bad_source(tmp_path):
    result = run("kits_convert", "phantom", "-n", "2", "--shape", "16", "32", "32",
                 "--data-root", str(tmp_path), "-d", "Tiny", "--quiet")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "raw" / "Tiny" / "labelsTr" / "case_00001.nii.gz").exists()

    src = tmp_path / "src" / "case_00000"
    src.mkdir(parents=True)
    (src / "imaging.nii.gz").write_text("not an image")
    (src / "segmentation.nii.gz").write_text("not an image")
    result = run("kits_convert", "kits", str(tmp_path / "src"), "--data-root", str(tmp_path), "--quiet")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert all(line.startswith("error: ") for line in lines) and "Traceback" not in result.stderr
    assert "case_00000/imaging.nii.gz: not a readable gzip file" in lines[0]


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path):
    from kitsseg.demo import DemoConfig, run_demo

    summary = run_demo(DemoConfig(workdir=tmp_path / "demo", minutes=0.4, num_train=5, num_test=2, device="cpu",
                                  quiet=True))
    written = (tmp_path / "demo" / "summary.json").read_text()
    assert '"kidney_dice"' in written and summary["num_cases"] == 2
    assert len(list((tmp_path / "demo" / "predictions").glob("*.png"))) == 2
