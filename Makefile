# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
# Each (re)builds the local virtual environment .venv when pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The demo needs no torch: its environment (~1.4 GB, ~2 min) is a subset of the test one (~7 GB, torch
# and torchvision for the parity tests and baselines), so `make demo` on a fresh machine installs only it.
STAMP := $(VENV)/.installed-demo
TEST_STAMP := $(VENV)/.installed-test

.PHONY: demo test lint venv clean browser

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install -q -e '.[demo]'
	touch $(STAMP)

$(TEST_STAMP): pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install -q -e '.[test,demo]'
	touch $(TEST_STAMP)

venv: $(TEST_STAMP)

# The main job on the bundled demo collection; each stage is a file target, so a second run reuses
# what is already built (delete demo-output/ to start over).
DEMO := demo-output
COLL := $(DEMO)/collection
RUN := $(DEMO)/run

# A new demo builder (data/demo.py) makes a new collection: the old one and the run trained on it go.
$(COLL)/images.csv: data/demo.py | $(STAMP)
	rm -rf $(COLL) $(RUN)
	$(PY) -m data demo $(COLL)

$(RUN)/signatures.npz: $(COLL)/images.csv
	$(PY) -m train --collection $(COLL) --preset demo --weights random --out $(RUN) $(if $(wildcard $(RUN)/config.json),--resume)

$(DEMO)/clusters.csv: $(RUN)/signatures.npz
	$(PY) -m cluster optics $< --min-samples 2 --xi 0.05 --metric cosine --out $@

$(DEMO)/quality.json: $(DEMO)/clusters.csv
	$(PY) -m cluster evaluate $< --collection $(COLL) --json $@

$(DEMO)/map/map.html: $(RUN)/signatures.npz $(DEMO)/clusters.csv
	$(PY) -m cluster map $< --collection $(COLL) --clusters $(DEMO)/clusters.csv --out $(DEMO)/map

$(DEMO)/report.html: $(DEMO)/quality.json $(DEMO)/map/map.html
	$(PY) -m cluster report --collection $(COLL) --clusters $(DEMO)/clusters.csv --run $(RUN) \
		--quality $(DEMO)/quality.json --map $(DEMO)/map --out $@

# Search: an index of the collection at 224 px (regions need a feature map of several cells; the demo trains at
# 64), and a gallery of the images most like the source of the first pasted detail (its copies, and the
# painting it was pasted into, matched by a region).
$(DEMO)/index/manifest.json: $(RUN)/signatures.npz
	rm -rf $(DEMO)/index
	$(PY) -m model index --collection $(COLL) --weights $(RUN)/weights --resolution 224 --out $(DEMO)/index --no-progress

$(DEMO)/search.html: $(DEMO)/index/manifest.json
	$(PY) -m model search $(DEMO)/index -k 12 --html $@ --json $(DEMO)/search.json --uid "$$($(PY) -c \
		"import csv; print(next(r['derived_from'] for r in csv.DictReader(open('$(COLL)/images.csv', encoding='utf-8')) if r['kind'] == 'detail'))")"

demo: $(STAMP) $(DEMO)/report.html $(DEMO)/search.html
	@echo
	@echo "Report: $(abspath $(DEMO)/report.html)"
	@echo "Judge the proposed clusters in your browser:"
	@echo "  $(PY) -m cluster annotate --collection $(COLL) --clusters $(DEMO)/clusters.csv --map $(DEMO)/map"
	@echo "  (or open $(abspath $(DEMO)/map/map.html) from the folder)"
	@echo "Search by image or by detail: $(abspath $(DEMO)/search.html), or"
	@echo "  $(PY) -m model search $(DEMO)/index --uid UID [--box X,Y,W,H] --html hits.html"
	@echo "  and in the annotation page: add --index $(DEMO)/index to the command above"

# The annotation app is tested in a real headless Chromium (Debian's; no browser download).
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -q && apt-get install -y -q --no-install-recommends chromium chromium-driver; \
	  else echo "make test needs Debian's chromium and chromium-driver: sudo apt-get install chromium chromium-driver" >&2; exit 1; fi; }

test: $(TEST_STAMP) browser
	$(PY) -m pytest -q -n 2 --dist loadgroup tests

lint: $(TEST_STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) demo-output
