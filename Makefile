# Two commands do all set-up on a fresh machine with Python 3.11 and pip: `make demo`, `make test`.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)

.PHONY: install demo test test-fast bench clean chromium

$(PY):
	@command -v $(PYTHON) >/dev/null || { echo "needs $(PYTHON)"; exit 1; }
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q --upgrade pip
	# torch first and exactly pinned, so no other package's range drags another build in
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[test]'
	# scenedetect and rapidocr require the GUI opencv-python (needs the system libGL); both share
	# one cv2/ folder with the headless build. Keep only the headless build, deliberately.
	$(PY) -m pip uninstall -q -y opencv-python opencv-python-headless
	$(PY) -m pip install -q --no-deps opencv-python-headless==5.0.0.93
	$(PY) -c "import cv2, av, decord, torch, ray, deepspeed; print('install ok: torch', torch.__version__, 'ray', ray.__version__)"
	rm -f $(VENV)/.installed-*; touch $(STAMP)

install: $(STAMP)

# The whole flow offline (configs/demo.yaml): world -> curate -> caption -> precompute -> train -> sample.
# A re-run into demo-output resumes (finished stages are reused); rm -rf demo-output starts clean.
demo: install
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0 $(VENV)/bin/reelforge demo --output demo-output

# Best effort: the report test renders the page in headless Chromium (it skips, with a reason, without it).
chromium:
	-@command -v chromium >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1 || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >/dev/null 2>&1 || \
	  echo "chromium could not be installed: the report browser test will skip"

test: install chromium
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m pytest tests

test-fast: install
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m pytest tests -m "not slow"

clean:
	rm -rf $(VENV) demo-output
