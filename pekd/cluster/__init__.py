"""The cluster side: what submits runs to SLURM, what a job does there, and what reads back where a sweep stands.

launchers/submit.py is the front end: it checks before queueing (submit_checks, preflight), turns the site's needs
into sbatch options (sbatch) and never queues a run twice (launch_guard). Every job runs launch, which resumes its
run and requeues it; with --runs-per-gpu, a task runs a pack of runs side by side on shared GPUs (packing), under
CUDA MPS where the node has it (mps). `pekd status` (status) finds a folder's runs (sweep), reads their run
directories (run_files) and SLURM's queue (queue), judges each run (run_state) and prints the commands that
resubmit the failed ones (resubmit). Kept apart from the trainer so that a run started by `pekd train` never
imports any of it.
"""
