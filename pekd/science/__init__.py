"""What the science commands share beneath their command lines: the mechanism diagnostics and the runs side by side.

pekd.analyze measures what distillation did to a trained run with the accumulators of diagnostics.py; a run with
trainer.analyze=true takes the same measurements from its final evaluation's own forward pass (fused_analysis.py,
which pekd.train hands to the trainer). pekd.demo and pekd.study train many runs at once in worker processes that
stop together on a signal (side_by_side.py); the study's cells, run overrides and report options are study_plan.py.
The commands themselves stay at pekd's top level; the statistics of their verdicts are the report's
(pekd.report.stats).
"""
