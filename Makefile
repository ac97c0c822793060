# The two commands a new user needs; each does whatever set-up is still missing first.
.PHONY: demo test setup lint bench wheel

setup:
	@bash scripts/setup.sh

demo: setup
	.venv/bin/python -m pekd.demo

test: setup
	.venv/bin/ruff check pekd launchers tests bench
	.venv/bin/python -m pytest -q tests

lint: setup
	.venv/bin/ruff check pekd launchers tests bench

# A wheel of pekd alone (configs inside) in dist/, for `pip install dist/pekd-*.whl` or a wheelhouse.
wheel: setup
	.venv/bin/pip wheel -q --no-deps --no-build-isolation -w dist .
	rm -rf build
