"""User mistakes give one clear message naming the key, file or line, and no traceback."""

from __future__ import annotations

import json
import logging
import runpy
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from shaping.config import compose_raw

from .conftest import REPO

ROW = '{"id": "a", "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}'


@pytest.fixture
def run_script(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> Callable[..., subprocess.CompletedProcess[str]]:
    """`python SCRIPT ARGS` run in this process (what is tested is the message, not the process): the
    script's __main__ block with its argv, its exit code, and what it printed and logged. An exception
    other than SystemExit is a traceback the user would see, and fails the test by propagating."""
    monkeypatch.chdir(REPO)

    def run(script: str, *args: str) -> subprocess.CompletedProcess[str]:
        monkeypatch.setattr(sys, "argv", [script, *args])
        code: object = 0
        root = logging.getLogger()
        handlers, level = list(root.handlers), root.level
        loggers = logging.Logger.manager.loggerDict.values()
        enabled = [lg for lg in loggers if isinstance(lg, logging.Logger) and not lg.disabled]
        with caplog.at_level(logging.INFO):
            try:
                runpy.run_path(str(REPO / script), run_name="__main__")
            except SystemExit as exit_:
                code = exit_.code
            finally:  # Hydra configures logging for its job (and disables existing loggers): undo it
                root.handlers[:], root.level = handlers, level
                for logger in enabled:
                    logger.disabled = False
        out, err = capsys.readouterr()
        returncode = code if isinstance(code, int) else 1  # sys.exit("message") exits 1
        message = "" if isinstance(code, int) or code is None else str(code)
        return subprocess.CompletedProcess([script, *args], returncode, out, err + message + caplog.text)

    return run


def write_params(tmp_path: Path, *overrides: str) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(OmegaConf.to_yaml(compose_raw(["+experiment=smoke", *overrides])))
    return path


def assert_clear_failure(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output
    assert "Traceback" not in output, output
    for needle in needles:
        assert needle in output, output


def test_bad_override_names_the_key(
    tmp_path: Path, run_script: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    proc = run_script("src/train.py", "lora.rr=4", f"hydra.run.dir={tmp_path}")
    assert_clear_failure(proc, "rr")


def test_bad_value_type_names_the_key(
    tmp_path: Path, run_script: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    proc = run_script("src/train.py", "+lora.rank=4", f"hydra.run.dir={tmp_path}")
    assert_clear_failure(proc, "lora.rank")


def test_missing_data_file_is_named(
    tmp_path: Path, run_script: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    # every path under tmp_path: under --params, the stage writes its run record to paths.adapter_dir
    params = write_params(tmp_path, f"paths.validated_dir={tmp_path}/nothing", f"paths.adapter_dir={tmp_path}/adapter")
    proc = run_script("src/train.py", "--params", str(params))
    assert_clear_failure(proc, f"{tmp_path}/nothing/train.jsonl: file not found")
    assert (tmp_path / "nothing" / "run.json").is_file() is False  # the adapter dir holds the record
    record = json.loads((tmp_path / "adapter" / "run.json").read_text())
    assert record["exit_status"] == "failed" and "train.jsonl: file not found" in record["error"]


def test_malformed_jsonl_line_is_named(
    tmp_path: Path, run_script: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    data = tmp_path / "validated"
    data.mkdir()
    (data / "train.jsonl").write_text(ROW + "\n" + '{"id": "b", "messages": [\n')
    params = write_params(tmp_path, f"paths.validated_dir={data}", f"paths.adapter_dir={tmp_path}/adapter")
    proc = run_script("src/train.py", "--params", str(params))
    assert_clear_failure(proc, f"{data}/train.jsonl:2: malformed JSON")
    record = (tmp_path / "adapter" / "run.json").read_text()
    assert '"exit_status": "failed"' in record and "malformed JSON" in record


def test_validate_gate_stops_on_bad_rows(
    tmp_path: Path, run_script: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    synth = tmp_path / "synth" / "identity_distillation"
    synth.mkdir(parents=True)
    rows = [ROW.replace('"a"', f'"{i}"') for i in range(30)]
    rows[4] = rows[4].replace('"yo"', '""')
    (synth / "samples.jsonl").write_text("\n".join(rows) + "\n")
    out = tmp_path / "validated"
    params = write_params(tmp_path, f"paths.synth_dir={tmp_path}/synth", f"paths.validated_dir={out}")
    proc = run_script("src/validate.py", "--params", str(params))
    assert_clear_failure(proc, "samples.jsonl:5: messages[1].content: empty")
    report = OmegaConf.load(out / "report.json")
    assert report.passed is False and report.checks.invalid_rows.value == 1
    assert not (out / "train.jsonl").exists(), "no training split from data that failed the gate"


BNB_WARNINGS = """
import logging
import shaping.stage  # what every stage script imports first
logger = logging.getLogger("bitsandbytes.backends.cpu.ops")
logger.warning("Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please ...", "no kernels")
logger.warning("Failed to load the bitsandbytes native library: %s", "libbitsandbytes_cpu.so missing")
"""


def test_stages_drop_only_bitsandbytes_optional_kernel_warning() -> None:
    """The hub kernel bitsandbytes cannot fetch offline is not news; its other warnings still show."""
    proc = subprocess.run([sys.executable, "-c", BNB_WARNINGS], capture_output=True, text=True, check=True)
    assert "kernels-community" not in proc.stderr
    assert "Failed to load the bitsandbytes native library: libbitsandbytes_cpu.so missing" in proc.stderr
