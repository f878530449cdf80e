"""The protocols as published tables ran them, measured while a method trains, never changing its training.

- kNN every N epochs (``RunConfig.knn_every``): lightly's CIFAR-10 benchmark scores a weighted kNN (k=200, T=0.1)
  on the test set after every epoch and its table reports the best epoch. After every N-th epoch and after the last
  one, the labelled training images' and the test images' features (``bench.features.extract``: an eval-mode copy,
  the encoder left as it was) go to the ``knn`` protocol with ``protocol_args["knn"]``; one entry is tracked (``knn``
  under the default settings, else the first the settings ask for), at the last and at the best evaluated epoch.
  Best is picked on the test set, so it is optimistic.
- Online linear probe (``RunConfig.online_linear``), solo-learn's online classifier: ``nn.Linear(D, C)`` trained
  beside the method on the encoder's detached output of each training step's own forward pass (captured by a
  forward hook on ``method.encoder`` from the step's first call until the rows cover the batch: one call for most
  methods, one per BN group for MoCo's grouped forward; k*N rows for N labels take the labels k times; label -1,
  unlabelled images, is ignored), then scored on the test images' eval-mode features after every epoch. MAE never
  calls its encoder's forward in a step (it encodes the visible patch tokens only), so its probe is a skipped entry.
  Settings as solo-learn's ``BaseMethod.learnable_params`` and ``solo/args/pretrain.py`` (vturrisi/solo-learn,
  commits c980e9e3 and 07458e52): the classifier is a parameter group of the method's own optimizer with its own
  ``classifier_lr`` scaled by batch/256 (0.1 in scripts/pretrain/cifar/simclr.yaml, commit 07f8c3bb; 0.3 for
  MoCo v2+), weight decay 0, momentum 0.9, and the method's schedule (warmup-cosine). Here: plain SGD, lr 0.1 x
  batch/256, momentum 0.9, no weight decay, the method's learning-rate factor at each step (``bench.optim.lr_factor``
  with the run's recipe). Differences: its own optimizer (solo-learn's LARS configs also LARS-scale the classifier
  weight), and a method that encodes its views one call each trains it on the first view only (solo-learn uses
  every large crop).

Never changing training: the features are detached copies, the head has its own optimizer and its own seeded
generator for its initialisation (the method's RNG stream is untouched), and extraction runs on a copy of the
encoder. A method fitted in closed form or untrained (``trained_by`` != "sgd") has no epochs: the kNN runs once on
the final model (epoch 0) and the online probe is a skipped entry, so suites over every method keep running.
The monitor's state (head, its optimizer, the curves) is saved in the run's checkpoint and restored on resume.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bench.config import RunConfig
from bench.data import Dataset
from bench.features import extract
from bench.optim import lr_factor
from methods.base import Method
from protocols import PROTOCOLS
from protocols.base import Features, classification_metrics
from protocols.limits import is_skipped, skipped

HEAD_LR = 0.1  # solo-learn's classifier_lr for its CIFAR LARS recipes, per batch 256
HEAD_MOMENTUM = 0.9
HEAD_SEED = 0x51A7  # offset of the head's own generator from the run seed
KNN_SELECTION = ("best: the highest top-1 over the evaluated epochs, picked on the test set as lightly's benchmark "
                 "table picks it, so it is optimistic; last: the final epoch's, no selection")
LINEAR_SELECTION = ("best: the highest online-probe top-1 over epochs, picked on the test set, so it is optimistic; "
                    "last: the final epoch's, as solo-learn reports it, no selection")


def wanted(cfg: RunConfig) -> bool:
    return cfg.knn_every > 0 or cfg.online_linear


def curve_summary(curve: list[list], every: int | None, selection: str) -> dict[str, Any]:
    """last, best (first epoch reaching the highest top-1) and the curve [[epoch, top1], ...]."""
    best_epoch, best = max(curve, key=lambda p: (p[1], -p[0]))
    out = {"last": curve[-1][1], "last_epoch": curve[-1][0], "best": best, "best_epoch": best_epoch}
    if every is not None:
        out["every"] = every
    return {**out, "evaluations": len(curve), "selection": selection, "curve": [list(p) for p in curve]}


class OnlineLinear:
    """A linear head trained on detached encoder features of the training steps (see the module docstring)."""

    def __init__(self, num_classes: int, lr: float, seed: int, device: torch.device) -> None:
        self.num_classes, self.lr, self.seed, self.device = num_classes, lr, seed, device
        self.head: nn.Linear | None = None  # built at the first features, when D is known
        self.opt: torch.optim.SGD | None = None
        self.parts: list[torch.Tensor] = []  # this step's encoder outputs, until they cover the batch
        self.rows, self.batch, self.complete = 0, 0, False
        self.steps, self.skipped_steps = 0, 0

    def build(self, dim: int) -> None:
        # skip_init draws nothing from the global RNG; the head's own generator does nn.Linear's default init.
        head = nn.utils.skip_init(nn.Linear, dim, self.num_classes)
        g = torch.Generator().manual_seed(self.seed)
        with torch.no_grad():
            nn.init.kaiming_uniform_(head.weight, a=math.sqrt(5), generator=g)
            nn.init.uniform_(head.bias, -1 / math.sqrt(dim), 1 / math.sqrt(dim), generator=g)
        self.head = head.to(self.device)
        self.opt = torch.optim.SGD(self.head.parameters(), lr=self.lr, momentum=HEAD_MOMENTUM, weight_decay=0.0)

    def hook(self, module: nn.Module, inputs: Any, output: Any) -> None:
        if self.complete or not isinstance(output, torch.Tensor) or output.ndim != 2:
            return
        self.parts.append(output.detach().clone())  # a copy: the method may change its output in place
        self.rows += len(output)
        self.complete = self.rows % self.batch == 0

    @contextlib.contextmanager
    def watching(self, encoder: nn.Module, batch: int) -> Iterator[None]:
        """Capture the encoder's outputs while the block (one training step) runs, from its first call until they
        cover the ``batch`` samples a whole number of times: one call for most methods, one per BN group for MoCo's
        grouped forward."""
        self.parts, self.rows, self.batch, self.complete = [], 0, max(1, batch), False
        handle = encoder.register_forward_hook(self.hook)
        try:
            yield
        finally:
            handle.remove()

    def update(self, labels: torch.Tensor, factor: float) -> None:
        """One SGD step of the head on the captured features at ``lr * factor``; skipped when rows do not fit labels."""
        parts, complete, self.parts = self.parts, self.complete, []
        n = len(labels)
        if not complete or n == 0:
            self.skipped_steps += 1
            return
        feats = torch.cat(parts)
        y = labels.to(feats.device).repeat(len(feats) // n)
        keep = y >= 0
        if not bool(keep.any()):
            self.skipped_steps += 1
            return
        if self.head is None:
            self.build(feats.shape[1])
        for g in self.opt.param_groups:
            g["lr"] = self.lr * factor
        with torch.enable_grad():
            loss = F.cross_entropy(self.head(feats[keep].float()), y[keep])
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
        self.opt.step()
        self.steps += 1

    @torch.no_grad()
    def top1(self, test_x: torch.Tensor, test_y: torch.Tensor) -> float | None:
        if self.head is None:
            return None
        scores = self.head(test_x.to(self.device)).float().cpu()
        return classification_metrics(scores, test_y.cpu(), self.num_classes)["top1"]

    def state_dict(self) -> dict[str, Any]:
        built = self.head is not None
        return {"head": self.head.state_dict() if built else None, "opt": self.opt.state_dict() if built else None,
                "steps": self.steps, "skipped_steps": self.skipped_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["head"] is not None:
            self.build(state["head"]["weight"].shape[1])
            self.head.load_state_dict(state["head"])
            self.opt.load_state_dict(state["opt"])
        self.steps, self.skipped_steps = state["steps"], state["skipped_steps"]


class Monitor:
    """The kNN monitor and the online probe of one run; the Trainer calls ``watching``, ``after_step``, ``after_epoch``."""

    def __init__(self, method: Method, ds: Dataset, cfg: RunConfig, steps_per_epoch: int, total_steps: int) -> None:
        self.method, self.ds, self.cfg, self.total_steps = method, ds, cfg, total_steps
        self.warmup = min(round(cfg.recipe.warmup_epochs * steps_per_epoch), total_steps // 10)  # as build_scheduler
        lr = HEAD_LR * cfg.batch_size / 256
        self.linear = OnlineLinear(ds.num_classes, lr, cfg.seed + HEAD_SEED, torch.device(cfg.device)) \
            if cfg.online_linear else None
        self.knn_curve: list[list] = []
        self.linear_curve: list[list] = []
        self.knn_key: str | None = None
        self.knn_settings: dict[str, Any] = {}
        self.knn_skipped: str | None = None
        self.seconds = 0.0
        self.norm = ds.mean_std()  # once: without published statistics it is a pass over the training images

    def watching(self, batch: int) -> contextlib.AbstractContextManager:
        """Around one training step of ``batch`` samples: the online probe's capture of the encoder's output."""
        return self.linear.watching(self.method.encoder, batch) if self.linear else contextlib.nullcontext()

    def after_step(self, labels: torch.Tensor, step: int) -> None:
        """The head's step at the method's learning-rate factor of optimiser step ``step`` (0-based)."""
        if self.linear:
            rec = self.cfg.recipe
            self.linear.update(labels, lr_factor(step, self.total_steps, self.warmup, rec.schedule, rec.milestones))

    def after_epoch(self, epoch: int, final: bool, history: list[dict[str, Any]]) -> None:
        """Evaluate what is due after ``epoch`` (1-based); each value also goes in that epoch's history entry."""
        knn_due = self.cfg.knn_every > 0 and (epoch % self.cfg.knn_every == 0 or final)
        if not (knn_due or self.linear):
            return
        t0 = time.perf_counter()
        entry = history[-1] if history and history[-1].get("epoch") == epoch else {}
        test_x = self.features(self.ds.test_x)
        if self.linear:
            top1 = self.linear.top1(test_x, self.ds.test_y)
            if top1 is not None:
                self.linear_curve.append([epoch, top1])
                entry["online_linear"] = top1
        if knn_due:
            top1 = self.knn(test_x, epoch)
            if top1 is not None:
                entry["monitor_knn"] = top1
        self.seconds += time.perf_counter() - t0

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return extract(self.method.encoder, images, *self.norm, self.cfg.device)

    def knn(self, test_x: torch.Tensor, epoch: int) -> float | None:
        """The knn protocol on this epoch's features; its first entry is the one tracked."""
        ds = self.ds
        train = Features(self.features(ds.train_x), ds.train_y, ds.num_classes, "train")
        test = Features(test_x, ds.test_y, ds.num_classes, "test")
        out = PROTOCOLS.get("knn")(train, test, seed=self.cfg.seed, device=self.cfg.device,
                                   **self.cfg.protocol_args.get("knn", {}))
        # The protocol's headline entry when its settings give one, else the first they ask for.
        self.knn_key = "knn" if "knn" in out else next(iter(out))
        entry = out[self.knn_key]
        if is_skipped(entry):
            self.knn_skipped = entry["skipped"]
            return None
        self.knn_settings = {k: v for k, v in entry.items() if k not in ("top1", "top5")}
        self.knn_curve.append([epoch, entry["top1"]])
        return entry["top1"]

    def metrics(self) -> dict[str, dict[str, Any]]:
        """The record's ``monitor_knn`` and ``online_linear`` entries (those asked for)."""
        out: dict[str, dict[str, Any]] = {}
        if self.cfg.knn_every > 0:
            if self.knn_curve:
                out["monitor_knn"] = {"key": self.knn_key, **curve_summary(self.knn_curve, self.cfg.knn_every,
                                                                           KNN_SELECTION), **self.knn_settings}
            else:
                out["monitor_knn"] = skipped(self.knn_skipped or "no epoch was evaluated")
        if self.linear:
            if self.linear_curve:
                out["online_linear"] = {**curve_summary(self.linear_curve, None, LINEAR_SELECTION),
                                        "lr": self.linear.lr, "momentum": HEAD_MOMENTUM, "weight_decay": 0.0,
                                        "schedule": self.cfg.recipe.schedule, "steps": self.linear.steps,
                                        "skipped_steps": self.linear.skipped_steps, "seed": self.linear.seed}
            else:
                out["online_linear"] = skipped("the encoder never gave 2-D features with one row per label (or k per "
                                               "label) in a training step, so the head never trained")
        return out

    def fitted_metrics(self) -> dict[str, dict[str, Any]]:
        """A method without SGD epochs: the kNN once on the final model (epoch 0); the online probe is skipped."""
        if self.cfg.knn_every > 0:
            self.knn(self.features(self.ds.test_x), 0)
        out = self.metrics()
        if self.linear:
            out["online_linear"] = skipped(f"{self.cfg.method} is not trained by SGD, so there is no training step to "
                                           "train an online probe beside; see its linear protocol")
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"knn_curve": self.knn_curve, "linear_curve": self.linear_curve, "knn_key": self.knn_key,
                "knn_settings": self.knn_settings, "knn_skipped": self.knn_skipped,
                "linear": self.linear.state_dict() if self.linear else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.knn_curve, self.linear_curve = [list(p) for p in state["knn_curve"]], [list(p) for p in state["linear_curve"]]
        self.knn_key, self.knn_settings, self.knn_skipped = state["knn_key"], state["knn_settings"], state["knn_skipped"]
        if self.linear and state["linear"] is not None:
            self.linear.load_state_dict(state["linear"])
