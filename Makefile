# Two commands do all set-up on a fresh machine with Python 3.11 and pip: `make demo`, `make test`.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)

.PHONY: install demo test test-fast bench clean chromium

$(PY):
	@command -v $(PYTHON) >/dev/null || { echo "needs $(PYTHON)"; exit 1; }
	$(PYTHON) -m venv $(VENV)

# Requirements that name the GUI opencv-python: installed with --no-deps (their other requirements are pinned in
# pyproject.toml), so pip resolves everything else once and never downloads opencv-python.
NO_DEPS := scenedetect rapidocr-onnxruntime
REQS    := $(VENV)/requirements.txt

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; no = '$(NO_DEPS)'.split(); \
	  reqs = p['dependencies'] + p['optional-dependencies']['test']; \
	  print(*[r for r in reqs if r.split('=')[0].split('[')[0] not in no], sep='\n', file=open('$(REQS)', 'w')); \
	  print(*[r for r in reqs if r.split('=')[0] in no], sep='\n', file=open('$(REQS).nodeps', 'w'))"
	# one resolve; torch is pinned exactly in it, so no other package's range drags another build in
	$(PY) -m pip install -q -r $(REQS)
	$(PY) -m pip install -q --no-deps -r $(REQS).nodeps -e .
	$(PY) -c "import cv2, av, decord, torch, ray, deepspeed, scenedetect, rapidocr_onnxruntime; print('install ok: torch', torch.__version__, 'ray', ray.__version__)"
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
