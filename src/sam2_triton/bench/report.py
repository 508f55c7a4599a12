"""Benchmark output: ``results.json``, a Markdown table and a latency-vs-concurrency plot."""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path


def write_json(report: dict, path: str | os.PathLike) -> Path:
    """The whole report as indented JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return path


def append_json_line(row: dict, path: str | os.PathLike | None) -> None:
    """Append ``row`` to the JSON-lines file ``path`` (folders made; nothing for None), as the
    GPU scripts keep one line per run in the file each device call brings back."""
    if path is None:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def _transport(r: dict) -> str:
    if r["backend"] == "triton":
        shm = "" if r.get("shared_memory", "none") == "none" else "+shm"
        return f"{r['protocol']}{shm} {r.get('wire_dtype', 'fp32')}"
    if r["backend"] == "onnxruntime":
        return "I/O binding" if r.get("io_binding") else "numpy"
    return "on device" if r["backend"] == "pytorch" else "numpy (photos)"


def _answer(r: dict) -> str:
    """What a session click asked for besides the IoU (``mask_rle``, ``masks``...)."""
    return "+".join(o for o in r.get("outputs", []) if o != "iou_predictions") or "iou"


def _series(r: dict) -> str:
    """One line of the plot: what varies between a model's results besides concurrency."""
    if r["model"].startswith("session"):
        # A session's transport is its protocol alone; its clicks differ by their answer.
        answer = f" {_answer(r)}" if r["model"] == "session_decode" else ""
        key = f"{r['backend']} {r['protocol']}{answer} {r['precision']}"
    else:
        key = f"{r['backend']} {_transport(r)} {r['precision']} b{r['batch']}"
    return key + (f" {r['label']}" if r.get("label") else "")


def _client_cpu(r: dict) -> str:
    """The client's CPU use in a case, with its processes where several ran the users."""
    cpu, processes = r.get("client_cpu_cores"), r.get("client_processes", 1)
    if cpu is None:
        return ""
    return f"{cpu:.2f}" + (f" ({processes} processes)" if processes > 1 else "")


def _size(r: dict) -> str:
    if r["model"] == "decoder":
        return f"{r['batch']} × {r.get('points', '?')} pts"
    if r["model"] == "decoder_prompts":
        return f"1 image, {r['batch']} × {r.get('points', '?')} pts"
    if r["model"] == "interactive":
        return f"1 + {r.get('clicks', '?')} clicks"
    if r["model"] == "session_start":
        return r.get("image", "1")
    if r["model"] == "session_decode":
        return f"1 click, {_answer(r)}, {r.get('request_bytes', '?')} B request"
    if r["model"] == "session_empty":
        return f"no prompt, image_size, {r.get('request_bytes', '?')} B request"
    return str(r["batch"])


def markdown(report: dict) -> str:
    """A Markdown summary: machine, versions, one table row per result, graphs, memory."""
    m, v = report.get("machine", {}), report.get("versions", {})
    lines = [
        f"# SAM2 benchmark ({report['config'].get('model_size')}) — {report['created']}",
        "",
        f"- machine: {m.get('gpu') or 'no GPU'}; CPU {m.get('cpu')} ({m.get('cpu_count')} "
        "threads)",
        "- versions: " + ", ".join(f"{k} {val}" for k, val in v.items()),
        "",
        "| backend | model | precision | device | transport | batch | conc. | p50 ms | p90 ms "
        "| p99 ms | throughput | baseline p50 ms | ratio p50 | ratio thr. |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        lat = r["latency_ms"]
        base, ratio = r.get("baseline"), r.get("ratio")
        label = f" ({r['label']})" if r.get("label") else ""
        lines.append(
            f"| {r['backend']}{label} | {r['model']} | {r['precision']} | {r['device']} "
            f"| {_transport(r)} | {_size(r)} | {r['concurrency']} | {lat['p50']:.2f} "
            f"| {lat['p90']:.2f} | {lat['p99']:.2f} | {r['throughput']:.1f} "
            f"{r['throughput_unit']} | "
            + (f"{base['latency_ms_p50']:.2f}" if base else ("—" if "baseline" in r else ""))
            + " | "
            + (f"{ratio['p50_latency']:.2f}" if ratio else "")
            + " | "
            + (f"{ratio['throughput']:.2f}" if ratio else "")
            + " |"
        )
    served = [r for r in report["results"] if r.get("server")]
    if served:
        lines += [
            "",
            "Server side, per request (Triton's statistics over each case; client p50 for "
            "comparison; the rest of the client's time is the client and the wire; client "
            "CPU: the benchmark's CPU seconds per second, near 1 per process its Python may "
            "set the pace):",
            "",
            "| case | transport | conc. | served model | mean batch | client p50 ms "
            "| server ms | queue | compute input | compute infer | compute output | client CPU |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in served:
            for model, st in r["server"].items():
                lines.append(
                    f"| {r['model']} {_size(r)} | {_transport(r)} | {r['concurrency']} "
                    f"| {model} | {st['mean_batch']} | {r['latency_ms']['p50']:.2f} "
                    f"| {st['success_ms']:.2f} | {st['queue_ms']:.2f} "
                    f"| {st['compute_input_ms']:.2f} | {st['compute_infer_ms']:.2f} "
                    f"| {st['compute_output_ms']:.2f} | {_client_cpu(r)} |"
                )
    staged = [r for r in report["results"] if (r.get("baseline") or {}).get("stages_ms")]
    if staged:
        lines += [
            "",
            "The session engine in process, ms per call of each stage (a synchronisation "
            "after each; batch: that many sessions' clicks in one call):",
            "",
            "| case | batch | stages |",
            "|---|---|---|",
        ]
        seen = set()
        for r in staged:
            base = r["baseline"]
            case = r["model"] + (f" ({', '.join(r['outputs'])})" if r.get("outputs") else "")
            rows = [(1, base["stages_ms"])]
            if base.get("batch"):
                rows.append((base["batch"]["batch"], base["batch"]["stages_ms"]))
            for batch, stages in rows:
                if (case, batch) in seen:
                    continue
                seen.add((case, batch))
                text = ", ".join(f"{k} {v:.2f}" for k, v in stages.items())
                lines.append(f"| {case} | {batch} | {text} |")
    if report.get("graphs"):
        lines += [
            "",
            "| graph | precision | Memcpy nodes | nodes after ORT optimization | file |",
            "|---|---|---|---|---|",
        ]
        for g in report["graphs"]:
            label = f" ({g['label']})" if g.get("label") else ""
            lines.append(
                f"| {g['model']}{label} | {g['precision']} | {g.get('memcpy_nodes', '—')} "
                f"| {g.get('nodes_after_optimization', '—')} | {Path(g['file']).name} |"
            )
    if report.get("memory"):
        lines += ["", "| memory | model | precision | device MiB |", "|---|---|---|---|"]
        for mem in report["memory"]:
            lines.append(
                f"| {mem['backend']} | {mem['model']} | {mem['precision']} "
                f"| {mem['device_memory_mb']} |"
            )
    if report.get("skipped"):
        lines += ["", "Skipped:"]
        lines += [f"- {s['case']}: {s['reason']}" for s in report["skipped"]]
    return "\n".join(lines) + "\n"


def write_markdown(report: dict, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.write_text(markdown(report))
    return path


#: The models the plot draws, one panel each, in this order.
PLOTTED_MODELS = (
    "encoder",
    "decoder",
    "decoder_prompts",
    "interactive",
    "session_start",
    "session_decode",
)


def plot_latency_vs_concurrency(report: dict, path: str | os.PathLike) -> Path | None:
    """p50 latency (p90–p99 as a band) against concurrency, one panel per model.

    Lines: each backend/transport/batch/precision; in-process baselines as dashed lines.
    Returns None when there is nothing to plot.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = report["results"]
    models = [m for m in PLOTTED_MODELS if any(r["model"] == m for r in results)]
    if not models:
        return None
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.5), squeeze=False)
    for ax, model in zip(axes[0], models):
        series: dict[str, list[dict]] = defaultdict(list)
        for r in results:
            if r["model"] == model:
                series[_series(r)].append(r)
        for key, rs in sorted(series.items()):
            rs = sorted(rs, key=lambda r: r["concurrency"])
            x = [r["concurrency"] for r in rs]
            p50 = [r["latency_ms"]["p50"] for r in rs]
            line = ax.plot(x, p50, marker="o", label=key)[0]
            ax.fill_between(
                x,
                [r["latency_ms"]["p90"] for r in rs],
                [r["latency_ms"]["p99"] for r in rs],
                color=line.get_color(),
                alpha=0.15,
            )
        seen = set()
        for r in results:
            base = r.get("baseline")
            if r["model"] != model or not base:
                continue
            what = _answer(r) if model == "session_decode" else f"b{r['batch']}"
            if (what, base["device"]) not in seen:
                seen.add((what, base["device"]))
                engine = "session engine" if model.startswith("session") else "ORT"
                ax.axhline(
                    base["latency_ms_p50"],
                    linestyle="--",
                    color="gray",
                    linewidth=1,
                    label=f"in-process {engine} {base['device']} {what} (baseline)",
                )
        ax.set_title(f"{model} ({report['config'].get('model_size')})")
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel("latency p50 ms (band: p90–p99)")
        ax.set_xscale("log", base=2)
        ticks = sorted({r["concurrency"] for r in results if r["model"] == model})
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
