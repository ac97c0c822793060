"""`python -m pekd <command> ...`: the `pekd` command for environments whose scripts folder is not on PATH."""

from pekd.cli import main

if __name__ == "__main__":
    main()
