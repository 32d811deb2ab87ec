"""A trial's series as TensorBoard event files (tensorboardX, imported when used)."""

from __future__ import annotations

import shutil
from pathlib import Path

from fedll.tracking.series import TrialSeries


def write_events(logdir: Path, series: TrialSeries) -> Path:
    """Write ``series`` into ``logdir`` (replacing what an interrupted write left there):
    each scalar per round, the final measures at the last round, the modality switches as
    text and the trial's parameters as text at round 0."""
    from tensorboardX import SummaryWriter

    logdir = Path(logdir)
    if logdir.exists():
        shutil.rmtree(logdir)
    last = max((t for values in series.scalars.values() for t, _ in values), default=0)
    writer = SummaryWriter(logdir=str(logdir))
    try:
        params = "\n".join(f"- {k}: {v}" for k, v in series.params.items())
        writer.add_text("trial", f"**{series.trial}**\n\n{params}", global_step=0)
        for tag, values in series.scalars.items():
            for step, value in values:
                writer.add_scalar(tag, value, global_step=step)
        for tag, value in series.final.items():
            writer.add_scalar(f"final/{tag}", value, global_step=last)
        for step, text in series.switches:
            writer.add_text("modality_switches", f"round {step}: {text}", global_step=step)
    finally:
        writer.close()
    return logdir
