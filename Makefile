# The two commands a new user needs; each does whatever set-up is still missing first.
.PHONY: demo test setup lint bench wheel soak gpu-check

setup:
	@bash scripts/setup.sh

demo: setup
	.venv/bin/python -m pekd.demo

test: setup
	.venv/bin/ruff check pekd launchers tests bench slurm
	.venv/bin/python -m pytest -q -n 3 --dist loadgroup tests

lint: setup
	.venv/bin/ruff check pekd launchers tests bench slurm

# A wheel of pekd alone (configs inside) in dist/, for `pip install dist/pekd-*.whl` or a wheelhouse: any Python
# with pip (PYTHON=..., default python3), no set-up and no .venv, seconds. A Python with setuptools >= 77 builds
# offline (--no-build-isolation); any other has pip fetch setuptools into an isolated build environment.
wheel:
	@py=$${PYTHON:-python3}; \
	if $$py -c 'import setuptools, sys; sys.exit(int(setuptools.__version__.split(".")[0]) < 77)' 2>/dev/null; \
	then set -- --no-build-isolation; fi; \
	set -x; $$py -m pip wheel -q --no-deps "$$@" -w dist .
	rm -rf build

# The chaos soak: one run through 50 random interruptions (USR2, TERM, SIGKILL, SIGKILL mid-checkpoint), then its
# figures (interruptions survived, steps recomputed, time lost); tens of minutes on a small machine. Then the
# model-based fault soak: 2,000 generated sequences of events over run directories (tests/fault_model.py), failures
# shrunk to minimal sequences; its figures (sequences, events, time, failures found); about an hour.
soak: setup
	.venv/bin/python -m bench.soak --n 50
	.venv/bin/python -m bench.fault_model --n 2000

# The GPU check (docs/gpu_check.md): no set-up and no .venv -- any Python with torch (PYTHON=...), offline. Without
# CUDA it is the CPU rehearsal. OUT_DIR defaults to $$OUT or ./gpu_check_out; FASHION_MNIST=DIR adds that step.
gpu-check:
	bash bench/gpu_check.sh $(OUT_DIR) $(if $(FASHION_MNIST),--fashion-mnist $(FASHION_MNIST))
