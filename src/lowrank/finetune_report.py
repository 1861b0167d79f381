"""Fine-tuning results as a table and as curves against the LoRA rank (text for the CLI, a report section).

The report's *LoRA rank curves* section (:func:`lora_section`) reads the ``finetune``
entry that :mod:`lowrank.finetune` stores in each row's summary, one group at a time:
test accuracy, trainable parameters, training time and training memory against the
LoRA rank, with full fine-tuning and training from scratch as dashed horizontal
references, the table of every row and the rank the rule picks. LoRA runs trained
without ``lowrank finetune`` (no ``finetune`` entry) are drawn as before: test accuracy
against rank, one line per dataset, when there are two ranks or more.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import TYPE_CHECKING

from . import plots
from .document import Image, Section, Table
from .finetune import FinetuneResult, FinetuneRow, choose_from_rows, group_rows

if TYPE_CHECKING:
    from .report import RunData

__all__ = ["finetune_table", "finetune_lines", "lora_section", "rank_figure"]

_COLUMNS = ["row", "run", "rank", "test accuracy", "val accuracy", "trainable params", "train time (wall)",
            "fastest epoch", "train CPU time", "training memory", "of which activations", "peak RSS growth"]


def _mib(v: float) -> str:
    return f"{v / 2**20:.2f} MiB"


def finetune_table(rows: Sequence[FinetuneRow]) -> Table:
    """One line per row: accuracies, trainable parameters, times, exact training memory, peak RSS growth."""
    out = []
    for r in rows:
        out.append([r.label, str(r.run_id), "-" if r.rank is None else str(r.rank), f"{100 * r.test_acc:.2f}%",
                    "-" if r.val_acc is None else f"{100 * r.val_acc:.2f}%", f"{r.trainable:,}",
                    f"{r.train_time:.1f} s", f"{r.fastest_epoch:.2f} s", f"{r.cpu_time:.1f} s",
                    _mib(r.memory["total"]),
                    _mib(r.memory["activations"]), _mib(r.peak_rss)])
    return Table(list(_COLUMNS), out, numeric=set(range(1, len(_COLUMNS))))


def finetune_lines(result: FinetuneResult) -> list[str]:
    """The CLI's text: the pretrained model's accuracy, the table, the chosen rank and the rule."""
    lines = []
    if result.pretrained_test_acc is not None:
        lines.append(f"pretrained model's own test accuracy: {100 * result.pretrained_test_acc:.2f}%")
    t = finetune_table(result.rows)
    cells = [t.columns] + t.rows
    widths = [max(len(r[j]) for r in cells) for j in range(len(t.columns))]
    for r in cells:
        lines.append("  ".join(c.rjust(w) if j in t.numeric else c.ljust(w)
                               for j, (c, w) in enumerate(zip(r, widths))).rstrip())
    c = result.choice
    if c is not None:
        lines.append(f"chosen rank: {c.rank} ({c.reason}; validation accuracy)")
    return lines


def rank_figure(rows: Sequence[FinetuneRow], title: str) -> bytes:
    """PNG: accuracy, trainable parameters, time and memory against rank, references dashed."""
    lora = sorted((r for r in rows if r.kind == "lora"), key=lambda r: r.rank or 0)
    refs = [r for r in rows if r.kind != "lora"]
    ranks = [r.rank for r in lora]

    def panel(ylabel: str, value, log_y: bool = False) -> plots.Panel:
        return plots.Panel(ylabel, [plots.Series("LoRA", ranks, [value(r) for r in lora])],
                           [(r.label, value(r)) for r in refs], log_y)

    panels = [panel("test accuracy (%)", lambda r: 100 * r.test_acc),
              panel("trainable parameters (log)", lambda r: r.trainable, log_y=True),
              panel("training CPU time (s)", lambda r: r.cpu_time),
              panel("training memory (MiB)", lambda r: r.memory["total"] / 2**20)]
    return plots.to_png(plots.rank_panels(panels, xlabel="LoRA rank r", title=title))


def _plain_lora_section(runs: Sequence["RunData"]) -> Section | None:
    by_ds: dict[str, dict[int, float]] = defaultdict(dict)
    for r in runs:
        acc = (r.summary or {}).get("test_acc")
        rank = (r.config.get("method") or {}).get("rank")
        if r.method == "lora" and acc is not None and rank:
            by_ds[r.dataset][int(rank)] = max(acc, by_ds[r.dataset].get(int(rank), 0.0))
    series = [plots.Series(ds, sorted(pts), [100 * pts[k] for k in sorted(pts)])
              for ds, pts in by_ds.items() if len(pts) >= 2]
    if not series:
        return None
    return Section("LoRA rank curves", images=[Image(
        "lora_rank", plots.to_png(plots.xy_lines(series, xlabel="LoRA rank r", ylabel="test accuracy (%)",
                                                 title="Fine-tuning accuracy against adapter rank", log_x=True)),
        alt="test accuracy against LoRA rank")])


def lora_section(runs: Sequence["RunData"]) -> Section | None:
    """The LoRA rank curves of every fine-tuning group among ``runs`` (see the module docstring)."""
    groups = group_rows([(r.id, r.summary) for r in runs])
    groups = {g: rows for g, rows in groups.items() if any(r.kind == "lora" for r in rows)}
    if not groups:
        return _plain_lora_section([r for r in runs if not (r.summary or {}).get("finetune")])
    images, notes, tables = [], [], []
    for i, (group, rows) in enumerate(sorted(groups.items())):
        images.append(Image(f"lora_rank_{i}", rank_figure(rows, group),
                            alt=f"accuracy, trainable parameters, time and memory against LoRA rank for {group}",
                            caption=f"{group}: LoRA rows as lines against the rank; full fine-tuning and scratch "
                                    f"as dashed lines."))
        tables.append(finetune_table(rows))
        summaries = {r.id: r.summary for r in runs}
        ft = (summaries.get(rows[0].run_id) or {}).get("finetune") or {}
        choice = choose_from_rows(rows, float(ft.get("tolerance", 1.0)))
        pre = ft.get("pretrained_test_acc")
        if pre is not None:
            notes.append(f"{group}: the pretrained model ({ft.get('source_dataset')}) scored {100 * pre:.2f}% on its "
                         f"own test set.")
        if choice is not None:
            notes.append(f"{group}: chosen rank {choice.rank}: {choice.reason} (validation accuracy).")
    section = Section(
        "LoRA rank curves", images=images, notes=notes, table=tables[0],
        paragraphs=["Each row fine-tunes the same pretrained dense model on the new dataset for the same epochs: "
                    "LoRA freezes it and trains rank-r adapters on the hidden layers plus a new output layer; full "
                    "fine-tuning trains every weight from the pretrained ones (new output layer); scratch trains "
                    "the architecture from a random initialization. Training memory is exact: weights + "
                    "gradients + optimizer state + the activations one step saves for backward (batch of the "
                    "run); peak RSS growth is the process' measured peak, noisy on a shared machine. Times cover the "
                    "training steps only (no evaluation): wall time in all, the fastest epoch's wall time, and the "
                    "process' CPU time (drawn: other work on a shared machine changes it least)."])
    if len(tables) > 1:
        section.paragraphs.append("The table shows the first group; the figures show every group.")
    return section
