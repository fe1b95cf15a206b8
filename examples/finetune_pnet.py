"""From a converted Caffe model to a resumed fine-tuning run, on CPU in a few seconds.

The story, step by step:
  1. read the real MTCNN P-Net Caffe weights (fixtures/caffe/mtcnn_pnet/det1.caffemodel)
     without Caffe: converters.read names them <layer>/<blob index>, e.g. conv1/0, conv1/1, PReLU1/0;
  2. load them partially into a PyTorch model for a new task: the P-Net backbone and its box
     regressor, plus an extra BatchNorm layer and a new 3-class head; the report says what was
     loaded, what was ignored on purpose (the old face/non-face head) and what is missing;
  3. initialise exactly what was missing (classic scheme, seeded);
  4. freeze the backbone, give the new head a 10x learning rate;
  5. train a few steps on synthetic data, saving a checkpoint after every epoch;
  6. stop, build everything afresh, resume from the checkpoint and continue;
  7. check that the resumed run ends bit for bit where an uninterrupted run ends.

Run: python examples/finetune_pnet.py [--workdir DIR]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

import converters  # noqa: E402
from converters.finetune import freeze, init_params, load_partial, param_groups, resume, save_checkpoint, summary  # noqa: E402

CAFFEMODEL = ROOT / "fixtures/caffe/mtcnn_pnet/det1.caffemodel"
EPOCHS, STEPS_PER_EPOCH, STOP_AFTER = 4, 5, 2

# Caffe names -> PyTorch names. conv4-1 (the face / non-face classifier) is dropped on purpose.
MAPPING = {"conv4-1/0": None, "conv4-1/1": None}
RENAME = [(r"^conv4-2/", "bbox/"), (r"^PReLU(\d)/0$", r"prelu\1.weight"), (r"/0$", ".weight"), (r"/1$", ".bias")]


class FaceAttributes(nn.Module):
    """P-Net backbone + its box regressor, an extra BatchNorm and a new 3-class head."""

    def __init__(self, num_classes: int = 3):
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 10, 3), nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)  # Caffe rounds pooled sizes up
        self.conv2, self.prelu2 = nn.Conv2d(10, 16, 3), nn.PReLU(16)
        self.conv3, self.prelu3 = nn.Conv2d(16, 32, 3), nn.PReLU(32)
        self.bbox = nn.Conv2d(32, 4, 1)
        self.bn = nn.BatchNorm2d(32)  # extra layer: not in the Caffe model
        self.drop = nn.Dropout(0.2)
        self.head = nn.Linear(32, num_classes)  # new head

    def forward(self, x):
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        boxes = self.bbox(x)
        logits = self.head(self.drop(self.bn(x).mean((2, 3))))
        return logits, boxes


def synthetic_batch(n: int = 16):
    """Images whose class is told by which colour channel is brightest (drawn from torch's RNG)."""
    labels = torch.randint(0, 3, (n,))
    images = torch.randn(n, 3, 24, 24) * 0.5
    images[torch.arange(n), labels] += 1.0
    return images * 128, labels  # Caffe P-Net input scale


def build(load_report_to=None):
    """Model (partially loaded, rest initialised, backbone frozen), optimizer and scheduler."""
    torch.manual_seed(1234)  # the constructor's own random init, replaced below where it matters
    model = FaceAttributes()
    with converters.read(CAFFEMODEL, "caffe") as weights:
        report = load_partial(model, weights, mapping=MAPPING, rename=RENAME)
    init = init_params(model, "classic", only=report, seed=0)
    freeze(model, exclude=[r"^bn\.", r"^head\."])
    optimizer = torch.optim.SGD(param_groups(model, {r"^head\.": "x10"}, base_lr=0.01, weight_decay=1e-4),
                                lr=0.01, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    if load_report_to is not None:
        load_report_to.extend([report, init])
    return model, optimizer, scheduler


def train_epoch(model, optimizer, scheduler) -> float:
    model.train()
    total = 0.0
    for _ in range(STEPS_PER_EPOCH):
        images, labels = synthetic_batch()
        logits, _ = model(images)
        loss = nn.functional.cross_entropy(logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        total += loss.item()
    scheduler.step()
    return total / STEPS_PER_EPOCH


def run(workdir: Path, epochs, start_from=None) -> nn.Module:
    model, optimizer, scheduler = build()
    first, best = 0, float("inf")
    if start_from is not None:
        state = resume(start_from, model, optimizer, scheduler)
        first, best = state.epoch + 1, state.metrics["best_loss"]
        print(f"  resumed from {state.path.name} after epoch {state.epoch} (lr now {scheduler.get_last_lr()})")
    if start_from is None:
        torch.manual_seed(99)  # the data and dropout stream; resume() restores it where it stopped
    for epoch in range(first, epochs):
        loss = train_epoch(model, optimizer, scheduler)
        best = min(best, loss)
        save_checkpoint(workdir, model, optimizer, scheduler, epoch=epoch,
                        metrics={"loss": loss, "best_loss": best}, is_best=loss <= best)
        print(f"  epoch {epoch}: loss {loss:.4f}")
    return model


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, help="where checkpoints go (a temporary directory by default)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        with converters.read(CAFFEMODEL, "caffe") as weights:
            print(f"1. {weights.path}: {len(weights)} arrays from Caffe ({', '.join(list(weights)[:4])}, ...)")
        reports = []
        model, _, _ = build(reports)
        print("2. partial load:", reports[0], sep="\n")
        print("3.", reports[1].headline(), "->", ", ".join(reports[1].names))
        print("4.", summary(model), sep="\n")
        print("5. uninterrupted run:")
        straight = run(workdir / "straight", EPOCHS)
        print(f"6. interrupted run: stop after epoch {STOP_AFTER - 1}, resume, continue")
        run(workdir / "interrupted", STOP_AFTER)
        resumed = run(workdir / "interrupted", EPOCHS, start_from=workdir / "interrupted")
        same = all(torch.equal(a, b) for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()))
        backbone_kept = torch.equal(resumed.conv1.weight, model.conv1.weight)
        print(f"7. resumed run matches the uninterrupted run bit for bit: {same}; frozen backbone unchanged: "
              f"{backbone_kept}")
        return 0 if same and backbone_kept else 1


if __name__ == "__main__":
    raise SystemExit(main())
