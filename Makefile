# All set-up lives here: `make run` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export KERAS_BACKEND ?= jax

.PHONY: run test test-fast bench bench-compare lint data data-fashion system-packages clean \
	ready-models ready-models-install

# The package and its runtime dependencies; redone when pyproject.toml changes.
$(BIN)/digitlab: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.dev: $(BIN)/digitlab
	$(BIN)/python -m pip install --quiet -e '.[dev,export,cluster]'
	touch $@

data: $(BIN)/digitlab
	$(BIN)/digitlab data fetch --dataset mnist

# Fashion-MNIST is only for the tests (and make bench): make run does not fetch it.
data-fashion: $(BIN)/digitlab system-packages
	$(BIN)/digitlab data fetch --dataset fashion-mnist

# Debian packages the tests use: chromium for the browser tests (Playwright's own browser
# download cannot work here), dataset-fashion-mnist (the Fashion-MNIST source used offline) and
# fonts: print, script and handwriting fonts whose letters the CNN learns as "not a digit"
# (synthetic.TRAINING_FONT_FAMILIES), and other handwriting fonts (numbers and letters no
# model was trained on, for the tests and benchmarks).
FONTS := fonts-dejavu-core fonts-liberation fonts-freefont-ttf fonts-urw-base35 \
	fonts-sil-andika fonts-tlwg-purisa-ttf fonts-dustin fonts-tomsontalks fonts-lobster \
	fonts-cabinsketch fonts-humor-sans fonts-breip \
	fonts-dkg-handwriting fonts-femkeklaver fonts-rufscript fonts-kristi fonts-comic-neue \
	fonts-bwht fonts-klee fonts-dancingscript
system-packages:
	@missing=""; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	[ -d /usr/share/datasets/fashion-mnist ] || missing="$$missing dataset-fashion-mnist"; \
	for font in $(FONTS); do \
	  dpkg -s $$font >/dev/null 2>&1 || missing="$$missing $$font"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -q && apt-get install -y -q $$missing; \
	  else echo "missing Debian packages:$$missing (sudo apt-get install$$missing)"; exit 1; fi; \
	fi

run: data
	$(BIN)/digitlab train

test: $(VENV)/.dev system-packages data data-fashion
	$(BIN)/python -m pytest --durations=25

# Everything but the tests that train on real MNIST or drive a browser.
test-fast: $(VENV)/.dev
	$(BIN)/python -m pytest -m "not slow"

# Each benchmark prints and writes JSON to benchmarks/results/; they train and predict with
# the newest run in ./runs (make run makes one).
bench: $(VENV)/.dev data data-fashion
	cd benchmarks && ../$(BIN)/python seed_pipeline.py
	cd benchmarks && ../$(BIN)/python predict_speed.py --run ../runs/latest
	cd benchmarks && ../$(BIN)/python robustness.py --run ../runs/latest
	cd benchmarks && ../$(BIN)/python serve_load.py --run ../runs/latest
	cd benchmarks && ../$(BIN)/python model_accuracy.py
	cd benchmarks && ../$(BIN)/python not_a_digit.py --run ../runs/latest
	$(BIN)/digitlab train --model cnn
	cd benchmarks && ../$(BIN)/python robustness.py --run ../runs/latest
	cd benchmarks && ../$(BIN)/python not_a_digit.py --run ../runs/latest
	$(BIN)/digitlab train --model reader
	cd benchmarks && ../$(BIN)/python number_reading.py

# The ready-made models shipped in src/digitlab/ready/, trained again by digitlab itself with
# fixed seeds (about an hour on 2 cores), then checked against the shipped ones: same data and
# settings, test accuracy within scripts/ready_models.py's tolerance. ready-models-install
# then ships the rebuilt ones. The reader is three readers (--members 3: seeds 0, 1, 2), each
# trained on three times the numbers of its 10-minute default (about 13 minutes each on an
# AMD EPYC), then trained further from there (--from) on 120,000 new numbers each (seeds 3, 4,
# 5) at a third of the rate (about 8 minutes each; see README.md for what each step gained).
READY_RUNS := build/ready-runs
ready-models: $(VENV)/.dev data system-packages
	rm -rf $(READY_RUNS)
	DIGITLAB_RUNS=$(READY_RUNS) $(BIN)/digitlab train --model cnn --seed 0
	DIGITLAB_RUNS=$(READY_RUNS) $(BIN)/digitlab train --model reader --seed 0 --numbers 120000 --members 3
	DIGITLAB_RUNS=$(READY_RUNS) $(BIN)/digitlab train --model reader --from $(READY_RUNS)/latest-reader \
		--seed 3 --numbers 120000 --epochs 3 --learning-rate 0.001
	$(BIN)/python scripts/ready_models.py check $(READY_RUNS)

ready-models-install:
	$(BIN)/python scripts/ready_models.py install $(READY_RUNS)

# The tutorial's own stack, in its own environment: tf.keras on TensorFlow's CPU build.
TF_VENV := .venv-tf
$(TF_VENV)/.installed:
	$(PYTHON) -m venv $(TF_VENV)
	$(TF_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(TF_VENV)/bin/python -m pip install --quiet "tensorflow-cpu>=2.16,<3" numpy
	touch $@

# tf.keras and digitlab alternately, 3 times each, then time-to-accuracy of the two CNNs.
bench-compare: $(VENV)/.dev data $(TF_VENV)/.installed
	cd benchmarks && ../$(BIN)/python compare_tf.py --tf-python ../$(TF_VENV)/bin/python

lint: $(VENV)/.dev
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) $(TF_VENV) runs
