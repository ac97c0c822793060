"""`python -m pekd.precompute experiment=... bank.views=K teacher.bank=DIR [key=value ...] [--dry-run]`

Precompute the frozen teacher's features for the K replayable views of every training sample into the feature
bank DIR, for `python -m pekd.train ... teacher.mode=bank teacher.bank=DIR` (same overrides). Takes the same Hydra
overrides as pekd.train and runs alone, under torchrun or in a SLURM task (ranks share the work). Interrupted,
it resumes: run the same command again. --dry-run prints the bank's size and the expected precompute time,
measured on a few batches, and writes nothing. A user error prints one line and exits with status 2.
"""

from __future__ import annotations

import sys

from pekd.errors import user_errors_exit


@user_errors_exit
def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("-h", "--help"):
        print(__doc__)
        return
    from pekd.engine.distributed import shutdown
    from pekd.teacher.precompute import dry_run, precompute
    from pekd.train import compose_config

    cfg = compose_config([a for a in args if a != "--dry-run"])
    if "--dry-run" in args:
        print(dry_run(cfg))
        return
    try:
        precompute(cfg)
    finally:  # an error must not leave the process group to the interpreter's exit
        shutdown()


if __name__ == "__main__":
    main()
