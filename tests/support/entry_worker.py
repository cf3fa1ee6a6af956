"""Run under torchrun by test_worker.py: every rank calls `start_engine`, as the commands do. Rank 0 generates
and shuts down; `Worker.loop` and `start_engine` leave a mark in OUT_DIR when they return, on any rank.

    torchrun ... entry_worker.py MODEL OUT_DIR KV_DISK_DIR
"""

import json
import sys
from pathlib import Path

from inference import envs
from inference.config import EngineConfig, SamplingParams
from inference.distributed import exit_process
from inference.engine.llm_engine import start_engine
from inference.engine.worker import Worker


def main(model: str, out_dir: str, kv_disk_dir: str) -> None:
    out = Path(out_dir)
    loop = Worker.loop

    def marked_loop(self):  # the real loop, then a mark that it returned
        loop(self)
        (out / f"loop-returned-rank{self.rank}").write_text("")

    Worker.loop = marked_loop
    engine = start_engine(EngineConfig(model=model, device="cpu", dtype="float32", tp=2, num_kv_blocks=64,
                                       kv_disk_dir=kv_disk_dir))
    (out / f"start-returned-rank{envs.rank()}").write_text("")
    tokens = engine.generate([list(range(100, 140))], SamplingParams(max_new_tokens=6, temperature=0.0,
                                                                      ignore_eos=True))
    engine.shutdown()
    (out / "tokens.json").write_text(json.dumps(tokens))
    exit_process(0)


if __name__ == "__main__":
    main(*sys.argv[1:])
