# respcache: `make run` serves it on http://127.0.0.1:$(PORT); `make test` runs the whole suite.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PORT   ?= 8000
export PORT

.PHONY: install run lint test bench faults stop clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[server,test]'
	touch $@

install: $(VENV)/.installed

run: install
	$(PY) manage.py migrate --noinput
	$(PY) manage.py collectstatic --noinput -v0
	$(VENV)/bin/gunicorn -c gunicorn.conf.py project.wsgi

# Lint, format check and strict typing (the [tool.ruff] and [tool.mypy] settings in pyproject.toml).
lint: install
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check . && $(VENV)/bin/mypy

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

bench: install
	$(PY) -m bench

faults: install
	$(PY) -m faults

stop:
	$(PY) project/embedded_redis.py stop
	$(PY) project/cluster_redis.py stop

clean: stop
	rm -rf .run staticfiles
