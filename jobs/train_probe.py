"""A linear probe for task recognition on video-level features: how much the features know.

    python -m jobs.train_probe OUT --labels labels.csv [--epochs N] [--seed S] [--test-fraction F]

Joins the committed videos of OUT with a labels file (csv `video_id,label`; see
`pipeline.read.task_dataset.read_labels`), splits them per class with a seeded shuffle, standardises the
embeddings with the training set's mean and std, fits a logistic regression (one linear layer, softmax
cross-entropy, Adam, mini-batches in a seeded order) and prints JSON: train and test accuracy, chance
level (1 / classes) and the majority baseline (the most frequent training class, scored on the test set).
The same inputs and seed give the same split, weights and numbers.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

import numpy as np
import torch

from pipeline.errors import ConfigError, VidfeatError
from pipeline.read.features import SOURCES, load_videos
from pipeline.read.task_dataset import read_labels

log = logging.getLogger(__name__)


def labelled_features(out: str, labels_path: str, source: str = "parquet") -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(embeddings float32 [n, D], class indices int64 [n], classes) of the committed videos that have a label."""
    labels = read_labels(labels_path)
    videos = load_videos(out, source=source)
    rows, y = labels.select(videos.ids)
    return videos.embedding[rows], y, labels.classes


def split(y: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified split of item indices: per class, a seeded shuffle, then round(n_c · test_fraction)
    items (at least one when the class has two or more, never all) go to test. Returns sorted int64
    (train, test)."""
    if not 0 < test_fraction < 1:
        raise ConfigError(f"--test-fraction must be between 0 and 1, got {test_fraction}")
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == c))
        n_test = min(max(round(len(members) * test_fraction), int(len(members) > 1)), len(members) - 1)
        test.extend(members[:n_test])
        train.extend(members[n_test:])
    return np.sort(np.array(train, np.int64)), np.sort(np.array(test, np.int64))


def standardise(train: np.ndarray, *others: np.ndarray) -> list[torch.Tensor]:
    """Each array minus the training mean, over the training std (floored at 1e-6), as float32 tensors."""
    mean, std = train.mean(axis=0), np.maximum(train.std(axis=0), 1e-6)
    return [torch.from_numpy(((x - mean) / std).astype(np.float32)) for x in (train, *others)]


def fit(x: torch.Tensor, y: torch.Tensor, num_classes: int, *, epochs: int, seed: int, lr: float,
        weight_decay: float, batch_size: int) -> tuple[torch.nn.Linear, float]:
    """Logistic regression on x float32 [n, D], y int64 [n] → (the linear layer, last epoch's mean loss)."""
    torch.manual_seed(seed)
    model = torch.nn.Linear(x.shape[1], num_classes)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    order = torch.Generator().manual_seed(seed)
    loss_sum = 0.0
    for _ in range(epochs):
        loss_sum = 0.0
        for batch in torch.randperm(len(x), generator=order).split(batch_size):
            loss = torch.nn.functional.cross_entropy(model(x[batch]), y[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
            loss_sum += loss.item() * len(batch)
    return model, loss_sum / max(len(x), 1)


@torch.no_grad()
def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((model(x).argmax(dim=1) == y).float().mean()) if len(y) else float("nan")


def train_probe(out: str, labels: str, *, epochs: int = 100, seed: int = 0, test_fraction: float = 0.25,
                source: str = "parquet", lr: float = 1e-2, weight_decay: float = 1e-4, batch_size: int = 256) -> dict:
    """Fit and score the probe (see module doc); returns the JSON report as a dict."""
    x, y, classes = labelled_features(out, labels, source)
    if len(np.unique(y)) < 2:
        raise ConfigError(f"{out}: a probe needs labelled committed videos of two classes or more, "
                          f"found {len(y)} video(s) of {len(np.unique(y))} class(es)")
    train, test = split(y, test_fraction, seed)
    log.info("%d labelled videos of %d classes: %d to train, %d to test", len(y), len(classes), len(train), len(test))
    x_train, x_test = standardise(x[train], x[test])
    y_train, y_test = torch.from_numpy(y[train]), torch.from_numpy(y[test])
    model, loss = fit(x_train, y_train, len(classes), epochs=epochs, seed=seed, lr=lr,
                      weight_decay=weight_decay, batch_size=batch_size)
    majority = int(np.bincount(y[train], minlength=len(classes)).argmax())
    return {
        "train_accuracy": accuracy(model, x_train, y_train), "test_accuracy": accuracy(model, x_test, y_test),
        "chance": 1 / len(classes), "majority_baseline": float(np.mean(y[test] == majority)),
        "train_loss": loss, "num_train": len(train), "num_test": len(test), "num_classes": len(classes),
        "dim": int(x.shape[1]), "classes": classes, "epochs": epochs, "seed": seed, "test_fraction": test_fraction,
        "source": source,
    }


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m jobs.train_probe", description=__doc__.split("\n\n")[0])
    ap.add_argument("out", help="output directory (local path or fsspec URL)")
    ap.add_argument("--labels", required=True, help="csv video_id,label (labels may be any strings)")
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0, help="seed of the split, the initial weights and the batch order")
    ap.add_argument("--test-fraction", type=float, default=0.25, help="share of each class held out for testing")
    ap.add_argument("--source", choices=SOURCES, default="parquet")
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--weight-decay", type=float, default=1e-4)
    ap.add_argument("--batch-size", type=int, default=256)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        report = train_probe(args.out, args.labels, epochs=args.epochs, seed=args.seed,
                             test_fraction=args.test_fraction, source=args.source, lr=args.lr,
                             weight_decay=args.weight_decay, batch_size=args.batch_size)
    except VidfeatError as exc:
        print(f"train_probe: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
