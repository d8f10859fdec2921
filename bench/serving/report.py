"""The generated part of docs/serving-benchmark.md, section by section, from the results JSON."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from bench.serving.cases import TARGET_CONCURRENCY
from bench.serving.cpu import CLIENT, OTHERS
from bench.serving.results import endpoint_label, is_bounded, is_target, point_label, ratio_bound, unavoidable_ms

GENERATED_BEGIN = "<!-- python -m bench.serving: generated from here -->"
GENERATED_END = "<!-- python -m bench.serving: generated up to here -->"
LATENCY_PARTS = {  # latency_breakdown_ms key: column title
    "http_and_json_ms": "HTTP, JSON, event-loop wait",
    "decode_wait_and_handoff_ms": "decode wait + hand-off",
    "decode_ms": "decode + crop",
    "queue_ms": "batch queue",
    "inference_ms": "inference (batch)",
    "client_latency_ms": "client latency",
}


def _rate(per_s: float) -> str:
    return f"{per_s:.0f}" if per_s >= 100 else f"{per_s:.1f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if i else "---" for i in range(len(header))) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _header(results: dict, plot_path: Path, doc_path: Path) -> list[str]:
    machine = results["machine"]
    return [
        GENERATED_BEGIN,
        "",
        f"Measured {results['date']} on {machine['cpus']} CPUs ({machine['processor']}), load average "
        f"{machine['loadavg_start']} at the start; commit {results['commit']}. Command:",
        "",
        f"    {results['command']}",
        "",
        f"![serving benchmark]({os.path.relpath(plot_path, doc_path.parent)})",
        "",
    ]


def _settings_section(case: dict) -> list[str]:
    settings = case["points"][0]["settings"]
    return [
        f"Service settings: intra-op threads {settings['intra_op_threads']} (0 = one per core), spinning "
        f"{settings.get('intra_op_spinning', 'onnxruntime default')}, "
        f"decode workers {settings['decode_workers']}, batching on = up to {settings['max_batch_size']} "
        f"images within {settings['max_queue_delay_ms']:g} ms, off = max_batch_size 1. "
        f"JPEGs of {case['photo_bytes_mean'] / 1024:.1f} KiB on average.",
        "",
    ]


def _session_options_section(case: dict) -> list[str]:
    check = case["session_options"]
    best = max(check["images_per_s"].values())
    lines = [
        f"Raw onnxruntime at batch {check['batch']} with a few session options (median of {check['repeats']}, "
        "interleaved): the limit below uses the service's (marked), so it is only as good as they are.",
        "",
    ]
    rows = [
        [name + (" **(service)**" if name == check["service_variant"] else ""), f"{value:.1f}", f"{value / best:.2f}"]
        for name, value in check["images_per_s"].items()
    ]
    return lines + _table(["session options", "images/s", "of the best"], rows)


def _points_section(points: list[dict]) -> list[str]:
    header = ["endpoint", "batching", "concurrency", "images", "end-to-end img/s", "limit img/s", "ratio",
              "ratio min..max", "p50 ms", "p95 ms", "p99 ms", "mean batch"]
    rows = [
        [endpoint_label(p), p["batching"], str(p["concurrency"]), str(p["images"]), f"{p['images_per_s']:.1f}",
         f"{p['limit_images_per_s']:.1f}", f"**{p['ratio']:.2f}**",
         f"{min(p['round_ratios']):.2f}..{max(p['round_ratios']):.2f}",
         f"{p['latency_ms']['p50']:.1f}", f"{p['latency_ms']['p95']:.1f}", f"{p['latency_ms']['p99']:.1f}",
         f"{p['mean_batch_size']:.1f}"]
        for p in points
    ]
    return _table(header, rows)


def _latency_section(points: list[dict]) -> list[str]:
    lines = [
        "",
        "Where a request's time goes (mean ms per image, from the timings each response carries; for the "
        "batch endpoint, the client latency is that of the request carrying the image):",
        "",
    ]
    rows = [
        [endpoint_label(p), p["batching"], str(p["concurrency"])]
        + [f"{p['latency_breakdown_ms'][key]:.2f}" for key in LATENCY_PARTS]
        for p in points
    ]
    return lines + _table(["endpoint", "batching", "concurrency", *LATENCY_PARTS.values()], rows)


def _cpu_section(points: list[dict]) -> list[str]:
    roles = sorted(
        {role for p in points for role, ms in p["cpu_ms_per_image"].items() if ms >= 0.005},
        key=lambda role: -max(p["cpu_ms_per_image"].get(role, 0.0) for p in points),
    )
    lines = ["", "Where the CPU goes (CPU ms per image, /proc; the limit's own CPU per image last):", ""]
    return lines + _table(
        ["role"] + [point_label(p, " ") for p in points],
        [[role] + [f"{p['cpu_ms_per_image'].get(role, 0.0):.2f}" for p in points] for role in roles]
        + [["**limit (raw onnxruntime)**"] + [f"{p['limit_cpu_ms_per_image']:.2f}" for p in points]],
    )


def _profile_section(profile: dict) -> list[str]:
    lines = [
        "",
        f"Profile (py-spy, samples of the thread holding the GIL in the service, batching on, concurrency "
        f"{profile['concurrency']}, {profile['images']} images): the GIL was held "
        f"**{profile['gil_busy_share']:.0%}** of the time, "
        f"{profile['python_ms_per_image']:.2f} ms of Python per image "
        f"({profile['images_per_s_under_profiler']:.0f} img/s under the profiler).",
        "",
    ]
    lines += _table(["where (nearest frame that says what for)", "share of GIL time"],
                    [[name, f"{share:.1%}"] for name, share in profile["categories"].items()])
    lines += ["", "Top leaf functions:", ""]
    top = list(profile["top_functions"].items())[:10]
    return lines + _table(["function", "share"], [[f"`{name}`", f"{share:.1%}"] for name, share in top])


def _floors_section(case: dict) -> list[str]:
    points, floors = case["points"], case["http_floors"]
    target = next((p for p in points if is_target(p)), None)
    lines = [
        "",
        "What HTTP costs without the rest (`bench/http_floor.py`, same uvicorn, same client, concurrency "
        f"{TARGET_CONCURRENCY}, measured in the same run), against the service itself:",
        "",
    ]
    rows = [
        [floor["title"], _rate(floor["requests_per_s"]), f"{floor['server_cpu_ms_per_request']:.2f}",
         f"{floor['client_cpu_ms_per_request']:.2f}"]
        for floor in floors.values()
    ]
    if target:
        server = sum(ms for role, ms in target["cpu_ms_per_image"].items() if role not in (CLIENT, OTHERS))
        rows.append(["the service (decode, batching, inference included)", _rate(target["images_per_s"]),
                     f"{server:.2f}", f"{target['cpu_ms_per_image'].get(CLIENT, 0.0):.2f}"])
    lines += _table(["server", "requests/s", "server CPU ms/request", "client CPU ms/request"], rows)
    lines += [
        "",
        "Decoding and cropping one photo (`decode_crops` in-process, no worker, no IPC) costs "
        f"{case['preprocess_cpu_ms_per_image']:.2f} ms of CPU. The limit excludes it and HTTP by definition; "
        "with the cores busy, a service that added nothing else could reach at most limit CPU / (limit CPU + "
        "HTTP floor + decoding), per image:",
        "",
    ]
    return lines + _table(
        ["point", "limit CPU ms/image", "HTTP floor + decoding ms/image", "bound on the ratio", "measured ratio"],
        [
            [point_label(p, " "), f"{p['limit_cpu_ms_per_image']:.2f}", f"{unavoidable_ms(case, p):.2f}",
             f"{ratio_bound(case, p):.2f}", f"{p['ratio']:.2f}"]
            for p in points
            if is_bounded(p)
        ],
    )


def _ranking_section(ranking: dict) -> list[str]:
    lines = [
        "",
        f"{ranking['classes']:,} classes, {ranking['members']} members: per-image cost against the model time "
        f"({ranking['model_ms_per_image']:.1f} ms per image: the limit at the batch sizes of batching on, "
        f"concurrency {TARGET_CONCURRENCY}):",
        "",
    ]
    return lines + _table(
        ["batch", "step", "ms per image", "share of model time"],
        [[batch, name, f"{cost['ms_per_image']:.3f}", f"{cost['share_of_model']:.3%}"]
         for batch, steps in ranking["by_batch"].items() for name, cost in steps.items()],
    )


def _case_section(case: dict) -> list[str]:
    points = case["points"]
    lines = [f"### {case['title']}", "", *_settings_section(case), *_session_options_section(case), ""]
    lines += [*_points_section(points), *_latency_section(points), *_cpu_section(points)]
    if case.get("profile"):
        lines += _profile_section(case["profile"])
    if case.get("http_floors"):
        lines += _floors_section(case)
    if case.get("ranking"):
        lines += _ranking_section(case["ranking"])
    return lines + [""]


def markdown(results: dict, plot_path: Path, doc_path: Path) -> str:
    """The generated part of docs/serving-benchmark.md."""
    lines = _header(results, plot_path, doc_path)
    for case in results["cases"]:
        lines += _case_section(case)
    lines.append(GENERATED_END)
    return "\n".join(lines)


def write_doc(path: Path, section: str) -> None:
    """Replace the generated part of ``path`` (or create the file), keeping what people wrote around it."""
    if path.exists() and GENERATED_BEGIN in (text := path.read_text()):
        head, rest = text.split(GENERATED_BEGIN, 1)
        tail = rest.split(GENERATED_END, 1)[1] if GENERATED_END in rest else ""
        path.write_text(head + section + tail)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("# Serving benchmark\n\n" + section + "\n")
