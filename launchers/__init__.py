"""SLURM launchers; an installed pekd carries this folder as pekd.launchers (the pekd-submit script)."""
