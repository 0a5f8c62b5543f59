"""A tiny training run as a separate process, for the resume (kill -9) and DDP tests.

``python train_worker.py OUT.safetensors CKPT_DIR [--steps N] [--batch B]``, also
under ``python -m torch.distributed.run --nproc_per_node 2``. Trains a seeded random ResNet-20
(BatchNorm statistics frozen, so a sharded batch normalises like the whole one) on 64 random
images; rank 0 writes the final weights to OUT.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

import numpy as np
import torch
from safetensors.torch import save_file

from mmcompress.adapters.classifier import ImageClassifierAdapter
from mmcompress.data import Dataset
from mmcompress.models.resnet_cifar import CifarResNet
from mmcompress.training import TrainCallback, Trainer, TrainSettings
from mmcompress.training.tasks import TaskObjective, make_task


class KillAt(TrainCallback):
    """SIGKILLs this process after step `$KILL_AT_STEP` (a kill -9 at a known point between
    checkpoints, without racing a timer)."""

    def on_step_end(self, trainer, step, total_steps) -> None:
        if step == int(os.environ.get("KILL_AT_STEP", "0")):
            os.kill(os.getpid(), signal.SIGKILL)


def tiny_data(n: int = 64) -> Dataset:
    rng = np.random.default_rng(0)
    images = [rng.random((32, 32, 3), dtype=np.float32) for _ in range(n)]
    return Dataset(name="noise", task="classification", images=images,
                   labels=[int(x) for x in rng.integers(0, 10, n)],
                   class_names=[str(i) for i in range(10)], templates=["{}"])


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("checkpoints")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--train-norm", action="store_true",
                    help="BatchNorm statistics update; every rank writes OUT.rankR")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    adapter = ImageClassifierAdapter(CifarResNet(20))
    settings = TrainSettings(epochs=100, max_steps=args.steps, batch_size=args.batch, lr=1e-3,
                             warmup=2, freeze_norm=not args.train_norm, checkpoint_every=3,
                             checkpoint_dir=None if args.checkpoints == "-" else args.checkpoints)
    objective = TaskObjective(adapter, make_task(adapter, tiny_data()))
    trainer = Trainer(adapter, objective, settings, callbacks=[KillAt()],
                      progress=False)
    summary = trainer.fit()
    state = {k: v.contiguous() for k, v in adapter.model.state_dict().items()}
    if args.train_norm:
        save_file(state, f"{args.out}.rank{trainer.world.rank}")
    elif trainer.world.is_main:
        save_file(state, args.out, metadata={"resumed_at": str(summary["resumed_at"])})


if __name__ == "__main__":
    main(sys.argv[1:])
