"""The XAI worker service (off by default): FastAPI + uvicorn in front of worker processes.

    RIGOR_XAI_TOKEN=$(openssl rand -hex 16) python scripts/xai_worker.py [--config FILE] [--set k=v]
    RIGOR_XAI_TOKEN=... python scripts/xai.py --from-manifest M --worker http://127.0.0.1:8765

Settings come from xai.worker in the config (default configs/default.yaml): host, port,
queue_size, workers, max_retries, backoff_s, token_env/token_file, results_root.
Exit codes: 0 stopped, 2 bad config or no token.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from rigor.cli import add_common_flags, add_set_flag, run_main


def main(argv: Sequence[str] | None = None) -> int:
    """Load the worker settings and serve until interrupted."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default="configs/default.yaml", help="config with xai.worker")
    add_set_flag(parser, "xai.worker.port=8800")
    add_common_flags(parser, env=False)
    args = parser.parse_args(argv)
    import uvicorn

    from rigor.config import load_config
    from rigor.xai.worker import create_app

    cfg = load_config(args.config, sets=args.sets).config.xai.worker
    app = create_app(cfg)
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
