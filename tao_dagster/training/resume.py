"""Where a killed training run resumes: its last Trainer checkpoint written to the end."""

from pathlib import Path


def last_saved_checkpoint(work_dir: Path) -> Path | None:
    """The newest Trainer checkpoint written to the end: the Trainer writes trainer_state.json last, so a
    checkpoint cut short by a kill has none and is passed over."""
    saved = [path for path in work_dir.glob("checkpoint-*") if (path / "trainer_state.json").is_file()]
    return max(saved, key=lambda path: int(path.name.removeprefix("checkpoint-")), default=None)
