"""`python -m pekd.report ROOT ...`: the spelling the documentation and older scripts use for `pekd report`."""

from pekd.report.cli import main

if __name__ == "__main__":
    main()
