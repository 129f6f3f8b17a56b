"""The one entry point every stage script goes through.

Under DVC (dvc.yaml runs `python src/<stage>.py --params params.yaml`), a stage reads exactly
params.yaml and writes to the paths dvc.yaml declares. Run by hand (`python src/<stage>.py
key=value ...`, or `-m` for a sweep), Hydra composes conf/ with the overrides and every output
goes under Hydra's run directory, so a hand run never overwrites a DVC-tracked output.
Either way the stage gets the same typed Config, and a run record is written on success and
on failure. A ShapingError (a mistake the user can fix) exits 1 with its message only.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from shaping.config import Config, find_repo_root, load_params, section_fingerprint, to_config
from shaping.errors import ShapingError
from shaping.tracking import RunRecord

log = logging.getLogger("shaping")

# Where the train stage puts its resumable checkpoints instead of paths.checkpoint_dir when set: the runs
# service sets it for DVC's queue, whose runs each get a fresh workspace (src/train.py)
CHECKPOINT_DIR_ENV = "SHAPING_CHECKPOINT_DIR"

# bitsandbytes on a CPU with AVX512-BF16 tries, at import, to fetch an optional fused 4-bit matmul
# from the Hugging Face hub (the `kernels` package) and warns when it cannot; every stage imports it
# through peft. Without it, QLoRA on CPU uses bitsandbytes' own compiled CPU kernel instead,
# so the warning says nothing a user can act on: it is dropped, and only that one.
_BNB_KERNELS_HINT = "Failed to load CPU gemm_4bit_forward from kernels-community"
logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(
    lambda record: not str(record.msg).startswith(_BNB_KERNELS_HINT)
)


@dataclass
class StageContext:
    name: str
    cfg: Config
    record: RunRecord
    out_root: Path | None  # None under DVC: outputs go to the declared paths

    @property
    def by_hand(self) -> bool:
        return self.out_root is not None

    def out(self, path: str | Path) -> Path:
        """Where this run writes `path` (a DVC output path in the config)."""
        return self.out_root / path if self.out_root is not None else Path(path)


StageBody = Callable[[StageContext], None]


def _execute(
    name: str, cfg: Config, sections: Sequence[str], body: StageBody, record_at: str, out_root: Path | None
) -> int:
    record = RunRecord(
        stage=name, params_fingerprint=section_fingerprint(cfg, sections), params_sections=list(sections)
    )
    ctx = StageContext(name=name, cfg=cfg, record=record, out_root=out_root)
    where = ctx.out(record_at)
    try:
        body(ctx)
    except ShapingError as err:
        record.finish(where, "failed", str(err))
        log.error("%s failed: %s", name, err)
        return 1
    except BaseException as err:
        record.finish(where, "failed", f"{type(err).__name__}: {err}")
        raise
    record.finish(where, "success")
    log.info("%s done in %.1fs (run record: %s)", name, record.duration_s or 0.0, where)
    return 0


def run_stage(name: str, sections: Sequence[str], body: StageBody, record_at: Callable[[Config], str]) -> None:
    """Run `body` as stage `name`; `record_at(cfg)` is where the run record goes (an output path)."""
    argv = sys.argv[1:]
    if argv[:1] == ["--params"]:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        if len(argv) < 2:
            sys.exit("error: --params needs a file, e.g. --params params.yaml")
        try:
            cfg = load_params(argv[1], overrides=argv[2:])
        except ShapingError as err:
            log.error("%s", err)
            sys.exit(1)
        sys.exit(_execute(name, cfg, sections, body, record_at(cfg), out_root=None))
    _run_with_hydra(name, sections, body, record_at)


def _run_with_hydra(name: str, sections: Sequence[str], body: StageBody, record_at: Callable[[Config], str]) -> None:
    import hydra
    from hydra.core.hydra_config import HydraConfig

    try:
        conf_dir = find_repo_root() / "conf"
    except ShapingError as err:
        sys.exit(f"error: {err}")

    def task(raw: DictConfig) -> None:
        try:
            cfg = to_config(raw, source="conf/ + overrides")
        except ShapingError as err:
            log.error("%s", err)
            sys.exit(1)
        out_root = Path(HydraConfig.get().runtime.output_dir)
        code = _execute(name, cfg, sections, body, record_at(cfg), out_root=out_root)
        if code:
            sys.exit(code)

    sys.argv = [*sys.argv, f"hydra.job.name={name}"]
    hydra.main(config_path=str(conf_dir), config_name="config", version_base="1.3")(task)()
