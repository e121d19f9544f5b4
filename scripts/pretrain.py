"""Pretrain a DINOv3 ViT encoder with a masked autoencoder on the train split's images.

    python scripts/pretrain.py --config configs/experiment/digits_mae.yaml [--set k=v ...]

Writes a run folder whose manifest's first stage is ``pretrain``; the encoder is saved with
save_pretrained under pretrain/hf/, for a fine-tune's model.init_from (this run's
manifest.json, hash-checked). With model.peft set (ExPLoRA: configs/experiment/
digits_explora.yaml) the adapters are merged into the saved encoder. --resume continues a
killed run bitwise, like train.py.

Exit codes: 0 ok, 1 unexpected, 2 invalid config, 4 env mismatch (strict), 5 artifact.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from rigor.cli import add_common_flags, add_set_flag, run_main


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, load the config, and pretrain."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", required=True, help="experiment YAML (composes via defaults:)")
    add_set_flag(parser, "pretrain.mask_ratio=0.6")
    parser.add_argument(
        "--resume",
        metavar="CHECKPOINT|RUN_DIR|auto",
        help="continue a killed pretraining: its last.pt, its run folder, or auto (the newest "
        "unfinished run of this experiment and config)",
    )
    add_common_flags(parser)
    args = parser.parse_args(argv)

    from rigor.config import load_config

    resolved = load_config(args.config, sets=args.sets)
    from rigor.pretraining.run import pretrain

    print(pretrain(resolved, env_policy=args.env_policy, force=args.force, resume=args.resume))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, defer_gc=True))
