"""The report (`pekd report`, `python -m pekd.report ROOT`): a folder of run directories -> report.md, .json, .csv
and .png, each configuration's mean and 95% CI over seeds and plain verdicts on paired comparisons.

One module per step, in the order the command runs them (cli.py): the runs and rows a sweep is made of (runs.py),
the rows' labels (labels.py) and published numbers (paper.py), every value of an --along key (along.py), the
statistics behind every interval and verdict (stats.py), then the outputs: report.md (markdown.py), report.json and
report.csv (csv_json.py), report.png (plot.py). Nothing is re-exported here: `python -m pekd.report` runs
__main__.py, and code that reports calls pekd.report.cli.main.
"""
