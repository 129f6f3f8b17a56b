"""Write params.yaml from conf/ plus overrides, exactly as `dvc exp run -S` does.

python -m shaping.config                       # params.yaml from the defaults
python -m shaping.config model=qwen2.5-0.5b-instruct lora.r=16
"""

from __future__ import annotations

import sys

from omegaconf import OmegaConf

from shaping.config.loading import compose_raw, find_repo_root, to_config
from shaping.errors import ShapingError


def main(argv: list[str]) -> int:
    try:
        raw = compose_raw(argv)
        to_config(raw, source="conf/")
    except ShapingError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    out = find_repo_root() / "params.yaml"
    out.write_text(OmegaConf.to_yaml(raw), encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
