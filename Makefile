# The two commands a new user needs; each does whatever set-up is still missing first.
.PHONY: demo test setup lint bench

setup:
	@bash scripts/setup.sh

demo: setup
	.venv/bin/python -m pekd.demo

test: setup
	.venv/bin/ruff check pekd launchers tests bench
	.venv/bin/python -m pytest -q tests

lint: setup
	.venv/bin/ruff check pekd launchers tests bench
