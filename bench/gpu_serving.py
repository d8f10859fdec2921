"""The service on CUDA against raw onnxruntime CUDA: one prepared run of at most ~8 minutes on a GPU machine.

    .venv/bin/python -m bench.gpu_serving                      # on the GPU machine
    .venv/bin/python -m bench.gpu_serving --cpu-dry-run --repository .cache/serving-bench/photo-tta
                                                               # the same code path on CPU, tiny, to check it runs

Needs the ``serve`` extra (onnxruntime-gpu) and ``train`` (torch, timm: the repository is exported
here through the real path); ``onnxruntime.preload_dlls()`` loads CUDA and cuDNN from the ``nvidia-*``
packages PyTorch ships. Steps, each timed and written to ``bench/results/gpu-serving.json``:

1. the ensemble: 3 untrained ResNet-50s at 224 px with a 50,000-class head, TTA 256..320 (the
   realistic case's repository, built once under ``.cache/serving-bench/realistic``);
2. providers: every member's session must report ``CUDAExecutionProvider`` first (else exit 2);
3. the limit: ``Ensemble.member_probabilities`` on crops made beforehand, batch 64, CUDA;
4. I/O binding: the same batches with the input copied to the GPU once per batch for all members
   and the logits left there until the softmax needs them;
5. fp16: the members exported again with fp16 weights inside (fp32 in and out), raw, batch 64;
6. the service: ``productrec serve`` on CUDA, dynamic batching up to 64, JPEGs posted at
   concurrency 128; its images/s over the limit's (target >= 0.8).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np

from bench import REPO

BATCH = 64
CONCURRENCY = 128


def timed(function: Callable[[], object], seconds: float, minimum: int = 3) -> float:
    """Calls per second of ``function`` over about ``seconds`` (after one warm-up call)."""
    function()
    calls, started = 0, time.perf_counter()
    while calls < minimum or time.perf_counter() - started < seconds:
        function()
        calls += 1
    return calls / (time.perf_counter() - started)


def check_providers(ensemble, provider: str) -> list[list[str]]:
    """Each member's providers in use; exit 2 unless the first is the one asked for."""
    wanted = {"cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider"}[provider]
    in_use = [member.providers for member in ensemble.members]
    if any(providers[0] != wanted for providers in in_use):
        print(f"providers in use are {in_use}, not {wanted}: refusing to measure", file=sys.stderr)
        raise SystemExit(2)
    return in_use


def io_bound_runner(ensemble, crops: list[list[np.ndarray]], tta: bool) -> Callable[[], np.ndarray]:
    """``member_probabilities`` with I/O binding: each group's batch is copied to the device once for all members."""
    import onnxruntime as ort

    from app.contract.ranking import crop_average_probabilities

    groups = ensemble.crop_groups(tta)
    device = "cuda" if ensemble.members[0].providers[0] == "CUDAExecutionProvider" else "cpu"

    def run() -> np.ndarray:
        probs = np.empty((len(ensemble.members), len(crops), ensemble.num_classes), np.float32)
        for index, group in enumerate(groups):
            batch = np.ascontiguousarray(np.concatenate([image[index] for image in crops]), np.float32)
            on_device = ort.OrtValue.ortvalue_from_numpy(batch, device, 0)
            for member_index in group.member_indices:
                member = ensemble.members[member_index]
                binding = member.session.io_binding()
                binding.bind_ortvalue_input(member.manifest.input_name, on_device)
                binding.bind_output(member.manifest.output_name, device)
                member.session.run_with_iobinding(binding)
                logits = binding.copy_outputs_to_cpu()[0]
                probs[member_index] = crop_average_probabilities(logits, len(group.sizes))
        return probs

    return run


def export_fp16(repository: Path, target: Path) -> list[Path]:
    """Each member again with fp16 weights and activations inside, fp32 at its input and output."""
    import timm
    import torch

    from app.contract.manifest import read_repository

    _, members = read_repository(repository, verify=False)
    paths = []
    for index, member in enumerate(members):
        torch.manual_seed(index)  # the same random weights as the fp32 export (bench.serving.repository)
        model = timm.create_model(member.manifest.architecture, pretrained=False, num_classes=member.manifest.num_classes)

        class Half(torch.nn.Module):
            def __init__(self, inner: torch.nn.Module) -> None:
                super().__init__()
                self.inner = inner.half().eval()

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return self.inner(x.half()).float()

        size = member.manifest.preprocess.input_size
        path = target / f"{member.manifest.name}-fp16.onnx"
        device = "cuda" if torch.cuda.is_available() else "cpu"
        with torch.no_grad():
            torch.onnx.export(
                Half(model).to(device), (torch.zeros(2, 3, size, size, device=device),), str(path),
                input_names=[member.manifest.input_name], output_names=[member.manifest.output_name],
                dynamic_axes={member.manifest.input_name: {0: "batch"}, member.manifest.output_name: {0: "batch"}},
                opset_version=17, dynamo=False,
            )
        paths.append(path)
    return paths


def raw_fp16(paths: list[Path], batch: np.ndarray, provider: str, seconds: float) -> dict:
    from app.engine.ensemble import create_session

    sessions = [create_session(path, provider) for path in paths]
    providers = [session.get_providers() for session in sessions]
    name = sessions[0].get_inputs()[0].name

    def run() -> None:
        for session in sessions:
            session.run(None, {name: batch})

    return {"providers": providers, "batches_per_s": timed(run, seconds)}


def service_rate(repository: Path, photos: list[bytes], provider: str, requests: int, scratch: Path) -> dict:
    """The real service: images/s and latency at ``CONCURRENCY``, batches of up to ``BATCH``."""
    from bench.serving.load import post_images
    from bench.serving.server import Service, settings_for

    cores = os.cpu_count() or 1
    overrides = {"provider": provider, "max_batch_size": str(BATCH), "queue_limit": str(4 * CONCURRENCY),
                 "decode_workers": str(max(1, cores - 2))}
    _, env = settings_for(repository, overrides)
    with Service(env, scratch / "gpu-service.log") as service:
        post_images(service.port, photos, CONCURRENCY, 2 * CONCURRENCY, 300, 600)
        load = post_images(service.port, photos, CONCURRENCY, requests, 300, 600)
    latencies = np.asarray([reply.latency_s for reply in load.replies]) * 1000
    return {
        "settings": overrides,
        "images": len(load.replies),
        "images_per_s": len(load.replies) / load.wall_s,
        "mean_batch": float(np.mean([reply.batch_size for reply in load.replies])),
        "latency_ms": {f"p{q}": float(np.percentile(latencies, q)) for q in (50, 95, 99)},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_serving", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, help="default: the realistic case's (built if missing)")
    parser.add_argument("--cpu-dry-run", action="store_true", help="CPU, tiny: check the script runs")
    parser.add_argument("--seconds", type=float, default=20.0, help="per raw measurement")
    parser.add_argument("--requests", type=int, default=2048, help="images posted to the service")
    parser.add_argument("--cache", type=Path, default=REPO / ".cache" / "serving-bench")
    parser.add_argument("--out", type=Path, help="default: bench/results/gpu-serving.json (a dry run: none)")
    args = parser.parse_args(argv)
    import tempfile

    import onnxruntime as ort

    provider, batch_size = ("cpu", 4) if args.cpu_dry_run else ("cuda", BATCH)
    if args.cpu_dry_run:
        args.seconds, args.requests = min(args.seconds, 2.0), min(args.requests, 16)
    if hasattr(ort, "preload_dlls") and not args.cpu_dry_run:
        ort.preload_dlls()  # CUDA and cuDNN from the nvidia-* wheels PyTorch installed
    from app.contract.preprocess import decode_crops
    from app.engine.ensemble import Ensemble
    from bench.serving.repository import ensure_repository, product_photos

    started = time.perf_counter()
    fmnist = Path("/usr/share/datasets/fashion-mnist")
    repository = args.repository or ensure_repository("realistic", args.cache, fmnist)
    photos = product_photos(fmnist, 64, 320)
    ensemble = Ensemble.load(repository, provider)
    result: dict = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "provider": provider,
                    "available_providers": ort.get_available_providers(), "onnxruntime": ort.__version__,
                    "providers_in_use": check_providers(ensemble, provider), "batch": batch_size}
    crops = [decode_crops(data, ensemble.crop_plan(True), 10**9) for data in photos[:batch_size]]
    plain = timed(partial(ensemble.member_probabilities, crops, True), args.seconds)  # no closure: ensemble is deleted below
    bound = timed(io_bound_runner(ensemble, crops, True), args.seconds)
    result["limit_images_per_s"] = plain * batch_size
    result["io_binding_images_per_s"] = bound * batch_size
    print(f"limit {plain * batch_size:.1f} img/s, with I/O binding {bound * batch_size:.1f} img/s", flush=True)
    with tempfile.TemporaryDirectory(prefix="gpu-serving-") as scratch:
        group = ensemble.crop_groups(True)[0]
        fp16_batch = np.concatenate([image[0] for image in crops]).astype(np.float32)
        fp16 = raw_fp16(export_fp16(repository, Path(scratch)), fp16_batch, provider, args.seconds)
        result["fp16_images_per_s"] = fp16["batches_per_s"] * batch_size
        result["fp16_providers"] = fp16["providers"]
        print(f"fp16 raw {result['fp16_images_per_s']:.1f} img/s ({len(group.sizes)} crops each)", flush=True)
        del ensemble  # the service loads its own copy
        result["service"] = service_rate(repository, photos, provider, args.requests, Path(scratch))
    result["ratio"] = result["service"]["images_per_s"] / result["limit_images_per_s"]
    result["target"] = 0.8
    result["wall_s"] = time.perf_counter() - started
    print(json.dumps(result, indent=2))
    out = args.out or (None if args.cpu_dry_run else REPO / "bench" / "results" / "gpu-serving.json")
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
