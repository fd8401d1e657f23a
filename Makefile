# chains_lite — build the book, run the tests, open the notebooks.
#   make book    execute every notebook, whatever an earlier build left in book/_build, and build
#                the HTML book (book/_build/html)
#   make test    unit tests + every notebook in lite mode, then the site built from those
#                executed notebooks and checked page by page in Chromium, then the dry run
#                (this is what CI runs)
#   make dry-run every notebook's full-mode branch on random-weight models (chains_lite.zoo.dryrun)
#   make lab     JupyterLab on notebooks/
#   make bench   run benchmarks/bench_*.py
#   make clean   remove the built book and the executed notebook copies
# Everything installs into .venv from pyproject.toml, pinned by constraints.txt.

PY     ?= python3
VENV   := .venv
PYTHON := $(VENV)/bin/python
PIP    := $(PYTHON) -m pip install -c constraints.txt

EXECUTED := book/_executed

.PHONY: venv chromium test dry-run book lab bench clean

venv: $(VENV)/.installed

# The stamp file is older than pyproject.toml or constraints.txt after an edit: reinstall.
$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PYTHON) || $(PY) -m venv $(VENV)
	$(PYTHON) -m pip install -q --upgrade pip
	$(PIP) -e ".[dev]"
	touch $@

# Debian's chromium for the site check (book/check_site.py), from apt when it is missing.
chromium:
	@command -v chromium >/dev/null 2>&1 || [ -x /usr/lib/chromium/chromium ] || { \
	  if [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then \
	    echo "make test needs Chromium for the site check: install Debian's package (apt-get install chromium)"; \
	    exit 1; fi; \
	  echo "installing chromium with apt-get"; \
	  apt-get update -qq >/dev/null && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; }

# Two pytest runs: the unit tests, then nbmake executing every notebook once in lite mode on the
# CPU, into copies under $(EXECUTED) (--overwrite keeps their outputs), in a process of its own (run
# after the unit tests in one process, chapter 1's kernel and nbclient waited on each other). The site is then built
# from those copies without executing anything again (book/build_site.py) and opened page by page in
# Chromium (book/check_site.py; screenshots in book/_build/site-check); last, the full-mode dry
# run. Plain `pytest` runs the unit tests only.
test: venv chromium
	rm -rf $(EXECUTED) && mkdir -p $(EXECUTED) && cp notebooks/*.ipynb $(EXECUTED)/
	CHAINS_MODE=lite $(PYTHON) -m pytest tests
	CHAINS_MODE=lite CHAINS_PROGRESS=off $(PYTHON) -m pytest --nbmake --nbmake-timeout=1200 --overwrite $(EXECUTED)
	$(PYTHON) book/build_site.py $(EXECUTED)
	$(PYTHON) book/check_site.py book/_build/html
	$(MAKE) dry-run

# Full mode without a GPU or the hub: the paper models' classes with random weights and reduced
# widths, tiny synthetic datasets in the real formats (written to build/dryrun/data), and every
# notebook executed with CHAINS_MODE=full. The numbers it prints are meaningless; it checks that
# the full-mode code runs. The DiffSeg runner writes the JSON chapter 5 reads in full mode.
DRY := build/dryrun
dry-run: venv
	rm -rf $(DRY)
	eval "$$($(PYTHON) -m chains_lite.zoo.dryrun $(DRY)/data --n 2)" && \
	$(PYTHON) benchmarks/diffseg.py --mode full --data "$$COCO_STUFF_ROOT" --file-list "$$COCO_STUFF_LIST" \
	  --fine-to-coarse "$$COCO_STUFF_FINE_TO_COARSE" --n-images 1 --n-boot 20 --out $(DRY)/diffseg.json && \
	DIFFSEG_RESULTS=$(CURDIR)/$(DRY)/diffseg.json $(PYTHON) -m pytest --nbmake --nbmake-timeout=900 \
	  -p no:cacheprovider notebooks

# Jupyter Book 1.x executes every notebook of $(BOOK) (tests/test_make_book.py builds a tiny one): the cache is
# emptied, and --all builds afresh (Sphinx's saved environment skips a notebook whose source did not change).
# Lite mode unless the venv's torch sees a GPU; an explicit CHAINS_MODE=... wins. CHAINS_PROGRESS=off
# keeps progress bars out of the pages (chains_lite.core.progress), as in `make test`.
BOOK := book
book: venv
	rm -rf $(BOOK)/_build/.jupyter_cache
	export CHAINS_MODE=$${CHAINS_MODE:-$$($(PYTHON) -c 'import torch; print("full" if torch.cuda.is_available() else "lite")')}; \
	echo "CHAINS_MODE=$$CHAINS_MODE"; \
	CHAINS_PROGRESS=off $(VENV)/bin/jupyter-book build --all $(BOOK)
	@echo "Book: $(abspath $(BOOK))/_build/html/index.html"

lab: $(VENV)/.installed-lab
	$(VENV)/bin/jupyter lab notebooks/

$(VENV)/.installed-lab: $(VENV)/.installed
	$(PIP) -e ".[dev,lab]"
	touch $@

bench: venv
	for f in benchmarks/bench_*.py; do \
	  [ -e "$$f" ] || continue; \
	  echo "== $$f"; $(PYTHON) "$$f" || exit 1; \
	done

clean:
	rm -rf book/_build $(EXECUTED) book/_generated book/lite_world.md build/dryrun
