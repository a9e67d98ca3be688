"""Results as a Markdown table (paper numbers beside ours) and a bar chart."""

from __future__ import annotations

from pathlib import Path

from evaluation.metrics import HIGHER_IS_BETTER
from evaluation.runner import TaskResult

# PersonaAgent (Zhang et al., 2025), Claude-3.5 on the real LaMP test sets: for reference only.
PAPER_PERSONAAGENT: dict[str, dict[str, float]] = {
    "LaMP-1": {"accuracy": 0.919},
    "LaMP-2M": {"accuracy": 0.513},
    "LaMP-2N": {"accuracy": 0.796},
    "LaMP-3": {"mae": 0.241},
}


def _metric_names(result: TaskResult) -> list[str]:
    return list(result.methods[0].metrics) if result.methods else []


def markdown(results: list[TaskResult]) -> str:
    out: list[str] = []
    for result in results:
        names = _metric_names(result)
        arrows = [f"{m} {'↑' if HIGHER_IS_BETTER.get(m, True) else '↓'}" for m in names]
        data = "SYNTHETIC data (not comparable with LaMP)" if result.synthetic else "LaMP data"
        mode = "free-form answers (as users ask, tools offered)" if result.free_form else "label choice"
        out.append(f"### {result.task} — {data}, {mode}, model `{result.model}`, {result.methods[0].n} users\n")
        primary = result.methods[0].primary_metric
        out.append(
            "| method | "
            + " | ".join(arrows)
            + f" | {primary} 95% interval | s/question | errors | aligned (accepted) |"
        )
        out.append("|---" * (len(names) + 5) + "|")
        for m in result.methods:
            values = " | ".join(f"{m.metrics[n]:.3f}" for n in names)
            accepted = "—" if m.alignments_accepted is None else str(m.alignments_accepted)
            span = f"[{m.interval[0]:.3f}, {m.interval[1]:.3f}]" if m.interval else "—"
            out.append(
                f"| {m.method} | {values} | {span} | {m.seconds_per_question:.1f} | {m.errors} | {accepted} |"
            )
        timing = f"answering took {result.answer_wall_s:.0f} s"
        if result.alignment_wall_s is not None:
            timing += f"; setting up and aligning every aligned user, as one batch, took {result.alignment_wall_s:.0f} s"
        paper = PAPER_PERSONAAGENT.get(result.task)
        if paper:
            values = " | ".join(f"{paper[n]:.3f}" if n in paper else "—" for n in names)
            out.append(f"| *paper: PersonaAgent, Claude-3.5, real LaMP* | {values} | — | — | — | — |")
        out.append(f"\nWall time: {timing}.\n")
        if result.comparisons:
            out.append(f"Paired differences on {primary} (same questions, 95% bootstrap interval):\n")
            out.append("| comparison | difference | 95% interval | verdict |")
            out.append("|---|---|---|---|")
            for c in result.comparisons:
                out.append(
                    f"| {c.method} − {c.baseline} | {c.difference:+.3f} | [{c.low:+.3f}, {c.high:+.3f}] | {c.verdict} |"
                )
            out.append("")
        costs = [m for m in result.methods if m.llm_calls_per_question is not None]
        if costs:
            out.append("What answering cost, per question (means over the answered questions):\n")
            out.append("| method | answers with call text | LLM calls | tool rounds | tokens | calls parsed / written as text |")
            out.append("|---|---|---|---|---|---|")
            for m in costs:
                share = f"{m.call_text_share or 0:.0%} ({round((m.call_text_share or 0) * (m.n - m.errors))} of {m.n - m.errors})"
                out.append(
                    f"| {m.method} | {share} | {m.llm_calls_per_question:.2f} | {m.tool_rounds_per_question:.2f} "
                    f"| {m.tokens_per_question:.0f} | {m.calls_parsed or 0} / {m.calls_written or 0} |"
                )
            out.append("")
    return "\n".join(out)


def bar_chart(results: list[TaskResult], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(r, m) for r in results for m in _metric_names(r)]
    cols = min(3, len(panels))
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.8 * rows), squeeze=False)
    for ax, (result, metric) in zip(axes.flat, panels, strict=False):
        methods = [m.method for m in result.methods]
        values = [m.metrics[metric] for m in result.methods]
        colors = ["tab:orange" if name.startswith("persona_agent") else "tab:blue" for name in methods]
        spans = [m.interval if m.primary_metric == metric and m.interval else None for m in result.methods]
        yerr = None
        if all(spans):
            yerr = [[v - s[0] for v, s in zip(values, spans, strict=True)],  # type: ignore[index]
                    [s[1] - v for v, s in zip(values, spans, strict=True)]]  # type: ignore[index]  # fmt: skip
        ax.bar(range(len(methods)), values, color=colors, yerr=yerr, capsize=3)
        ax.set_xticks(range(len(methods)), methods, rotation=60, ha="right", fontsize=8)
        arrow = "higher is better" if HIGHER_IS_BETTER.get(metric, True) else "lower is better"
        ax.set_title(
            f"{result.task}{' (synthetic)' if result.synthetic else ''}: {metric} ({arrow})", fontsize=9
        )
        paper = PAPER_PERSONAAGENT.get(result.task, {}).get(metric)
        if paper is not None and not result.synthetic:
            ax.axhline(paper, color="gray", linestyle="--", label="paper (Claude-3.5)")
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_reports(results: list[TaskResult], out: Path) -> dict[str, Path]:
    table = out / "results.md"
    table.write_text(markdown(results))
    paths = {"markdown": table}
    if results:
        paths["plot"] = bar_chart(results, out / "results.png")
    return paths
