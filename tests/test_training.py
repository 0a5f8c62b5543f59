"""The trainer: schedule, checkpoints, resume after kill -9, NaN handling, DDP on 2 processes."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from train_worker import tiny_data

from mmcompress.adapters.classifier import ImageClassifierAdapter, cifar_tensor
from mmcompress.errors import CheckpointError, UserError
from mmcompress.models.resnet_cifar import CifarResNet
from mmcompress.training import TrainCallback, Trainer, TrainSettings
from mmcompress.training.checkpoints import latest_checkpoint
from mmcompress.training.schedule import lr_factor
from mmcompress.training.tasks import TaskObjective, make_task

WORKER = Path(__file__).with_name("train_worker.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}


def _trainer(tmp_path: Path | None, callbacks=(), data=None, **kw) -> Trainer:
    torch.manual_seed(0)
    adapter = ImageClassifierAdapter(CifarResNet(20))
    settings = TrainSettings(**{"epochs": 1, "batch_size": 8, "lr": 1e-3, "warmup": 1,
                                "freeze_norm": True, "checkpoint_every": 2, **kw})
    objective = TaskObjective(adapter, make_task(adapter, data or tiny_data(16)))
    return Trainer(adapter, objective, settings, callbacks=callbacks, progress=False,
                   checkpoint_dir=tmp_path)


def test_schedule_warms_up_then_decays_to_zero():
    f = [lr_factor(s, 10, 2) for s in range(10)]
    assert f[0] < f[1] < f[2] == 1.0
    assert all(a >= b for a, b in zip(f[2:], f[3:]))
    assert lr_factor(10, 10, 2) == pytest.approx(0.0)


def test_training_lowers_the_loss_and_writes_checkpoints(tmp_path):
    trainer = _trainer(tmp_path, epochs=3, checkpoint_every=2)
    summary = trainer.fit()
    assert summary["steps"] == 6 and len(summary["epochs"]) == 3
    assert summary["epochs"][-1]["loss"] < summary["epochs"][0]["loss"]
    latest = latest_checkpoint(tmp_path)
    assert latest is not None and latest.name == "step-6"
    assert {"model.safetensors", "optimizer.safetensors", "state.json"} <= {
        p.name for p in latest.iterdir()}
    assert len(list(tmp_path.glob("step-*"))) == 2  # older ones are pruned


class _Counter(TrainCallback):
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.seen = 0

    def on_train_begin(self, trainer):
        self.calls.append(f"begin@{trainer.step}")

    def on_step_end(self, trainer, step, total_steps):
        self.seen += 1
        assert trainer.step == step and total_steps == trainer.total_steps

    def on_train_end(self, trainer):
        self.calls.append("end")

    def state_dict(self):
        return {"seen": self.seen}

    def load_state_dict(self, state):
        self.seen = state["seen"]


def test_callbacks_are_called_and_their_state_survives_resume(tmp_path):
    first = _Counter()
    done = _trainer(tmp_path, [first], epochs=2, max_steps=2).fit()
    assert first.calls == ["begin@0", "end"] and first.seen == 2
    again = _Counter()
    resumed = _trainer(tmp_path, [again], epochs=2, max_steps=2).fit()  # done: resumes at 2
    assert again.calls == ["begin@2", "end"] and again.seen == 2
    assert resumed["final_loss"] == done["final_loss"] is not None


def test_checkpoint_of_another_run_is_refused(tmp_path):
    _trainer(tmp_path, max_steps=2).fit()
    with pytest.raises(CheckpointError, match="other settings"):
        _trainer(tmp_path, max_steps=2, lr=5e-4).fit()


def test_checkpoint_of_a_run_on_other_examples_of_the_same_name_and_size_is_refused(tmp_path):
    """Data was told apart by name and example count only: swapped labels resumed."""
    _trainer(tmp_path, max_steps=2).fit()
    data = tiny_data(16)
    data.labels = [(y + 1) % len(data.class_names) for y in data.labels]
    with pytest.raises(CheckpointError, match="other settings"):
        _trainer(tmp_path, data=data, max_steps=2).fit()


def test_checkpoint_of_a_run_from_other_weights_or_callbacks_is_refused(tmp_path):
    """Shapes alike are not enough: a resumed run must start where the checkpointed one did."""
    _trainer(tmp_path, max_steps=2).fit()
    other = _trainer(tmp_path, max_steps=2)
    with torch.no_grad():
        other.model.linear.weight[0, 0] += 1.0
    with pytest.raises(CheckpointError, match="other settings"):
        other.fit()

    class _Target(TrainCallback):
        def __init__(self, sparsity: float) -> None:
            self.sparsity = sparsity

        def describe(self):
            return {"sparsity": self.sparsity}

    _trainer(tmp_path / "b", [_Target(0.5)], max_steps=2).fit()
    _trainer(tmp_path / "b", [_Target(0.5)], max_steps=2).fit()  # the same: it resumes
    with pytest.raises(CheckpointError, match="other settings"):
        _trainer(tmp_path / "b", [_Target(0.8)], max_steps=2).fit()


def test_checkpoint_of_a_run_training_other_parameters_is_refused(tmp_path):
    """Same settings and weights, other trainable parameters (a stage's targets/ignore)."""
    first = _trainer(tmp_path, max_steps=2)
    first.model.layer1.requires_grad_(False)
    first.fit()
    other = _trainer(tmp_path, max_steps=2)
    other.model.layer2.requires_grad_(False)
    with pytest.raises(CheckpointError, match="other settings"):
        other.fit()


def test_a_checkpoint_holding_nan_or_a_latest_naming_no_step_is_refused_on_resume(tmp_path):
    _trainer(tmp_path, max_steps=2, checkpoint_every=1).fit()
    step = latest_checkpoint(tmp_path)
    weights = load_file(step / "model.safetensors")
    weights["linear.weight"][0, 0] = float("nan")
    save_file(weights, step / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"model.safetensors: tensor 'linear.weight' "
                       r"holds NaN or Inf values; resume from an earlier step-N"):
        _trainer(tmp_path, max_steps=2, checkpoint_every=1).fit()
    for name in ("", "..", "step-1/x"):
        (tmp_path / "latest").write_text(name)
        with pytest.raises(CheckpointError, match=f"should name a step-N folder beside it, "
                                                  f"but holds '{re.escape(name)}'"):
            latest_checkpoint(tmp_path)


def test_resume_must_fails_without_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        _trainer(tmp_path / "missing", resume="must").fit()


class _Poison(TrainCallback):
    """Turns the weights into NaN after step 3, so step 4's loss is NaN."""

    def on_step_end(self, trainer, step, total_steps):
        if step == 3:
            with torch.no_grad():
                trainer.model.linear.weight.fill_(float("nan"))


def test_nan_loss_stops_naming_the_step_and_keeps_last_good_checkpoint(tmp_path):
    with pytest.raises(UserError, match=r"diverged at step 4: loss is nan.*step-2"):
        _trainer(tmp_path, [_Poison()], epochs=4, checkpoint_every=2).fit()
    good = latest_checkpoint(tmp_path)
    assert good.name == "step-2"
    assert all(torch.isfinite(t).all() for t in load_file(good / "model.safetensors").values()
               if t.is_floating_point())


@pytest.mark.parametrize("grad_clip", [1.0, None])
def test_non_finite_gradient_stops_before_the_step_with_or_without_clipping(tmp_path,
                                                                             grad_clip):
    trainer = _trainer(tmp_path, epochs=2, checkpoint_every=1, grad_clip=grad_clip)
    bias = trainer.model.linear.bias  # step 2: finite loss, infinite gradient
    bias.register_hook(lambda g: g * float("inf") if trainer.step == 1 else g)
    with pytest.raises(UserError, match=r"diverged at step 2: gradient norm .*step-1"):
        trainer.fit()
    assert latest_checkpoint(tmp_path).name == "step-1"
    assert torch.isfinite(bias).all()  # the optimizer did not step


def _run(args: list[str], **env) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(WORKER), *args], env={**ENV, **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_kill_9_then_same_command_resumes_to_identical_weights(tmp_path):
    ref = _run([str(tmp_path / "ref.safetensors"), "-"])
    cmd = [str(tmp_path / "out.safetensors"), str(tmp_path / "ckpt")]
    killed = _run(cmd, KILL_AT_STEP="8")  # checkpoints every 3 steps: step 6 is the last
    assert killed.wait(120) == -signal.SIGKILL, killed.communicate()[1].decode()[-2000:]
    assert not (tmp_path / "out.safetensors").exists()
    assert latest_checkpoint(tmp_path / "ckpt").name == "step-6"
    again = _run(cmd)
    assert again.wait(120) == 0, again.communicate()[1].decode()[-2000:]
    assert ref.wait(120) == 0, ref.communicate()[1].decode()[-2000:]
    with safe_open(tmp_path / "out.safetensors", "pt") as f:
        assert f.metadata()["resumed_at"] == "6"  # it did resume, not start over
    got, want = load_file(tmp_path / "out.safetensors"), load_file(tmp_path / "ref.safetensors")
    assert got.keys() == want.keys()
    for k in want:
        assert torch.equal(got[k], want[k]), k


def test_ddp_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
    """gloo on CPU, 6 AdamW steps of a global batch of 16 (8 per process). Stated tolerance:
    logits on the training images within 2e-3 while training moved them by more than 0.5.
    Weights are not compared exactly: the all-reduce sums the halves' gradients in another
    order, and AdamW turns such rounding differences in near-zero gradients into ±lr steps."""
    one = _run([str(tmp_path / "one.safetensors"), "-", "--steps", "6"])
    two = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(WORKER), str(tmp_path / "two.safetensors"), "-", "--steps", "6"],
        env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert one.wait(120) == 0, one.communicate()[1].decode()[-2000:]
    assert two.wait(120) == 0, two.communicate()[1].decode()[-3000:]
    data = tiny_data()
    pixels = cifar_tensor([data.load_image(i) for i in range(len(data))])
    logits = []
    for weights in ("start", "one", "two"):
        torch.manual_seed(0)
        model = CifarResNet(20).eval()
        if weights != "start":
            model.load_state_dict(load_file(tmp_path / f"{weights}.safetensors"))
        with torch.no_grad():
            logits.append(model(pixels))
    start, one_p, two_p = logits
    assert float((one_p - start).abs().max()) > 0.5  # training changed the model
    torch.testing.assert_close(two_p, one_p, atol=2e-3, rtol=0)


def test_ddp_processes_end_with_the_same_batchnorm_statistics(tmp_path):
    """Each process updated BatchNorm's running statistics on its own half of the last batch:
    rank 1 evaluated (and printed) a model rank 0 never saved."""
    out = tmp_path / "ddp.safetensors"
    two = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(WORKER), str(out), "-", "--steps", "2", "--train-norm"],
        env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert two.wait(120) == 0, two.communicate()[1].decode()[-3000:]
    rank0, rank1 = (load_file(f"{out}.rank{r}") for r in (0, 1))
    stats = [k for k in rank0 if k.endswith("running_mean")]
    assert stats and all(torch.equal(rank0[k], rank1[k]) for k in rank0)


def test_a_training_module_imports_first():
    """Since the package imports its API lazily, importing training.stage first went round a
    cycle (methods → distill → training.stage) and failed."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", "import mmcompress.training.stage"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-500:]
