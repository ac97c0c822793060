"""The steps of bench/gpu_check.sh, one module per check (docs/gpu_check.md).

Each step runs as its own process under its own `timeout`, and records one result (check, status, figure) with
pekd's real code on the CUDA device when there is one. Without CUDA a step that can rehearse its harness on the
CPU does so (same processes, signals, comparisons; CUDA-only settings left out) and reports NOT CHECKED, so a
GPU slot is spent on GPU questions, not on the check's own bugs.
"""
