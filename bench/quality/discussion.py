"""The report's discussion, stated from the numbers."""

from __future__ import annotations

from typing import Any

import numpy as np

from bench.quality.collect import images_tested_per_run
from bench.quality.plan import BASELINE, MAIN, SETTINGS
from training.loss_registry import LOSS_PRESETS, resolve_start

LONG_TAIL = ("bce", "ldam-drw", "la", "vs", "cdb")
NOISE_ROBUST = ("sce", "logitclip", "alpha", "absgd")


def _mean(cells: dict[str, Any], setting: str, loss: str, key: str = "top1_error") -> float | None:
    cell = cells[setting].get(loss)
    return cell[key]["mean"] if cell else None


def _padded(curves: list[list[dict[str, Any]]], key: str) -> np.ndarray:
    """``[runs, epochs]`` of ``key``, NaN after a run's last epoch (runs stop at different epochs)."""
    out = np.full((len(curves), max(len(curve) for curve in curves)), np.nan)
    for row, curve in zip(out, curves):
        row[: len(curve)] = [record.get(key) if record.get(key) is not None else np.nan for record in curve]
    return out


def memorisation_lines(numbers: dict[str, Any]) -> list[str]:
    """Whether plain ce memorises within the budget: its validation error after its best epoch, its training error against the noise rate."""
    lines = []
    for setting in ("sym40", "asym40"):
        curves = [run["curves"] for run in numbers["runs"].values() if run["setting"] == setting and run["loss"] == BASELINE]
        if not curves:
            continue
        val, train, zeta = (_padded(curves, key) for key in ("val_error", "train_error", "susceptibility"))
        mean_val = np.nanmean(val, axis=0)
        best = int(np.nanargmin(mean_val))
        last_val = np.mean([curve[-1]["val_error"] for curve in curves])
        last_train = np.mean([curve[-1]["train_error"] for curve in curves])
        after = zeta[:, best + 1 :]
        lines.append(
            f"- ce on {SETTINGS[setting].title} (mean of {len(curves)} seeds, which stop after {min(map(len, curves))} to "
            f"{max(map(len, curves))} epochs): validation error lowest at epoch {best + 1} ({mean_val[best]:.3f}), {last_val:.3f} at "
            f"each run's last epoch; training error against the noisy labels {np.nanmean(train[:, best]):.3f} → {last_train:.3f} "
            f"(noise rate {SETTINGS[setting].noise_rate:.2f}); ζ {np.nanmean(zeta[:, : best + 1]):.3f} up to the best epoch, "
            f"{np.nanmean(after) if np.isfinite(after).any() else float('nan'):.3f} after it."
        )
    return lines


def discussion(numbers: dict[str, Any]) -> list[str]:
    cells, lines = numbers["cells"], []
    lines += memorisation_lines(numbers)
    for setting in SETTINGS:
        measured = {loss: _mean(cells, setting, loss) for loss in numbers["rows"]}
        measured = {loss: value for loss, value in measured.items() if value is not None}
        if BASELINE not in measured or len(measured) < 2:
            continue
        ce = cells[setting][BASELINE]["top1_error"]
        ranking = sorted(measured, key=measured.get)
        clear = [loss for loss in ranking if loss != BASELINE and measured[BASELINE] - measured[loss] > 2 * max(
            cells[setting][loss]["top1_error"]["std"] or 0.0, ce["std"] or 0.0)]
        lines.append(
            f"- {SETTINGS[setting].title}: {' < '.join(f'{loss} {measured[loss]:.3f}' for loss in ranking)}. "
            + (f"Better than ce by more than two seed standard deviations: {', '.join(clear)}." if clear else "No preset beats ce by more than two seed standard deviations.")
        )
    main = {loss: _mean(cells, MAIN, loss) for loss in numbers["rows"]}
    pairs = [("ce", "sce"), ("bce", "bsce"), ("bsce", "bsce-la"), ("ce", "la"), ("ce", "ce+pla"), ("bsce-la", "bsce-la+pla"),
             ("ce", "ce+offsets"), ("la", "la+offsets"), ("bsce+pla", "bsce+pla+offsets")]
    effects = [f"{a} → {b} {main[b] - main[a]:+.3f}" for a, b in pairs if main.get(a) is not None and main.get(b) is not None]
    if effects:
        lines.append("- Composition on the main setting (test error change): " + ", ".join(effects) + ".")
    fitted = [run for run in numbers["runs"].values() if run.get("offsets_kept") is not None]
    if fitted:
        kept: dict[str, list[int]] = {}
        for run in fitted:
            kept.setdefault(run["loss"], []).append(int(run["offsets_kept"]))
        lines.append(
            f"- Class offsets were kept (their 2-fold cross-fit on the validation split made fewer mistakes) in {sum(map(sum, kept.values()))} "
            f"of {len(fitted)} runs: " + ", ".join(f"{loss} {sum(flags)}/{len(flags)}" for loss, flags in kept.items()) + ". Elsewhere the "
            f"row is its run without offsets, seed for seed (each half of the cross-fit holds {numbers['recipe']['val_per_class'] // 2} "
            "validation images a class)."
        )
    groups = {
        name: [main[loss] for loss in members if main.get(loss) is not None] for name, members in (("long-tail", LONG_TAIL), ("noise-robust", NOISE_ROBUST))
    }
    if all(groups.values()):
        lines.append(
            f"- On the main setting, the long-tail methods ({', '.join(LONG_TAIL)}) average {np.mean(groups['long-tail']):.3f} and the "
            f"noise-robust ones ({', '.join(NOISE_ROBUST)}) {np.mean(groups['noise-robust']):.3f}: with 40% symmetric noise on a ρ = 100 "
            "tail, the labels the class weights and priors are computed from are themselves noisy."
        )
    staged = []
    for loss, key in (("ldam-drw", "drw_epoch"), ("absgd", "absgd_epoch")):
        group = [run for run in numbers["runs"].values() if run["loss"] == loss]
        if group:
            start = resolve_start(LOSS_PRESETS[loss].params[key], group[0]["epochs"])
            early = sum(run["best_epoch"] <= start for run in group)
            staged.append(f"{loss} {early} of {len(group)} (second stage from epoch {start + 1})")
    if staged:
        lines.append(
            "- Two-stage methods against checkpoint selection: runs whose best validation epoch came before the second stage, "
            + ", ".join(staged) + ". Such a run's tested model never saw the stage (absgd's is then plain ce's, seed for seed): "
            "the papers' second stage starts at the first lr decay of a fixed 200-epoch schedule, where the plateau schedule here "
            "has already decayed and the best checkpoint is often earlier."
        )
    sizes = numbers["class_sizes"]
    if sizes:
        noisy, clean = sizes["noisy"], sizes["clean"]
        lines.append(
            f"- Class counts seen by the losses on the main setting run from {max(noisy)} to {min(noisy)} labels (ratio {max(noisy) / max(min(noisy), 1):.1f}) "
            f"instead of the true {max(clean)} to {min(clean)}, and {sizes['label_noise'][int(np.argmin(clean))]:.0%} of the smallest class's labels "
            "are wrong: symmetric noise flattens the label distribution, so priors and weights from the labels (bce, la, vs, ldam-drw) "
            "under-correct the true tail and up-weight mostly wrong labels."
        )
    monitor = numbers["susceptibility_vs_memorisation"]
    if monitor["pearson"] is not None:
        lines.append(
            f"- The monitor: across {monitor['runs']} noisy runs, ζ and the measured share of predicted flipped labels correlate with r = {monitor['pearson']:+.2f}. "
            "Across losses ζ does not rank memorisation (it is CE on each model's own logits, see above); along a run it does: "
            "ce's ζ rises after its best epoch, as its training error falls below the noise rate (first points). ζ needs no clean "
            "labels, so it is the signal available on real catalogues; its per-epoch values are noisy (one random batch), hence the running mean."
        )
    test_images = images_tested_per_run(numbers["runs"]) or 0
    lines += [
        "",
        f"Limits of this table: 10 classes of 28×28 images with synthetic noise; a 0.3 M-parameter network from scratch for at most "
        f"{numbers['recipe']['epochs']} epochs without augmentation; the defaults are the papers' (chosen for CIFAR/ImageNet schedules "
        "of 200 epochs), untuned here, so a method that needs tuning (LogitClip's τ, ABSGD's λ, the α-loss's α) may be under-served; "
        f"{test_images:,} test images per run, so one image is {100 / max(test_images, 1):.2g} point, and the tail third is three classes.",
    ]
    return lines
