# pgshift - GNU make build.
#
#   make            build ./pgshift and ./pgshift-ctl
#   make test       install missing packages, unit tests, integration tests
#   make unit       unit tests only
#   make san        the test suite under ASan+UBSan (build-san/)
#   make tsan       migrator and queue unit tests under TSan (build-tsan/)
#   make fuzz       build the libFuzzer targets and run each for FUZZ_SECONDS
#   make demo       local PostgreSQL servers, pgshift, a workload, a live migration
#   make bench      the benchmarks in bench/
#   make format / format-check

VERSION   := 0.1.0
CC        ?= cc
BUILD     ?= build
SAN_FLAGS ?=
OPT       ?= -O2 -g

PG_INC    := $(shell pg_config --includedir 2>/dev/null || echo /usr/include/postgresql)
WARN      := -Wall -Wextra -Wshadow -Wformat=2 -Wstrict-prototypes -Wmissing-prototypes \
             -Wswitch-enum -Wvla -Werror
CPPFLAGS  += -I. -I$(PG_INC) -D_GNU_SOURCE -DPGSHIFT_VERSION='"$(VERSION)"'
CFLAGS    += -std=c11 $(OPT) $(WARN) $(SAN_FLAGS) -MMD -MP
LDFLAGS   += $(SAN_FLAGS)
LIBS      := -luv -lpq -lssl -lcrypto -lpg_query -lpthread -lm

COMMON_SRC   := $(wildcard common/*.c)
WIRE_SRC     := $(wildcard wire/*.c)
CFG_SRC      := $(wildcard config/*.c)
ROUTING_SRC  := $(wildcard routing/*.c)
MIGRATOR_SRC := $(wildcard migrator/*.c)
PROXY_SRC    := $(filter-out proxy/main.c,$(wildcard proxy/*.c))

obj = $(patsubst %.c,$(BUILD)/%.o,$(1))

COMMON_OBJ   := $(call obj,$(COMMON_SRC))
WIRE_OBJ     := $(call obj,$(WIRE_SRC))
CFG_OBJ      := $(call obj,$(CFG_SRC))
ROUTING_OBJ  := $(call obj,$(ROUTING_SRC))
MIGRATOR_OBJ := $(call obj,$(MIGRATOR_SRC))
PROXY_OBJ    := $(call obj,$(PROXY_SRC))
CORE_OBJ     := $(PROXY_OBJ) $(MIGRATOR_OBJ) $(ROUTING_OBJ) $(CFG_OBJ) $(WIRE_OBJ) $(COMMON_OBJ)

UNIT_TESTS := $(patsubst tests/unit/%.c,$(BUILD)/tests/%,$(wildcard tests/unit/test_*.c))

.PHONY: all unit test integration san tsan fuzz demo bench format format-check clean deps \
        check-layers

all: pgshift pgshift-ctl

# cp + mv: a running ./pgshift keeps its old inode ("text file busy" otherwise).
pgshift: $(BUILD)/pgshift
	cp $< $@.tmp && mv -f $@.tmp $@

pgshift-ctl: $(BUILD)/pgshift-ctl
	cp $< $@.tmp && mv -f $@.tmp $@

$(BUILD)/pgshift: $(BUILD)/proxy/main.o $(CORE_OBJ)
	$(CC) $(LDFLAGS) -o $@ $^ $(LIBS)

$(BUILD)/pgshift-ctl: $(BUILD)/tools/pgshift-ctl.o $(COMMON_OBJ)
	$(CC) $(LDFLAGS) -o $@ $^ -lpq

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) -c -o $@ $<

# Unit tests: one binary per module, linking only what that module needs
# (so a hidden dependency fails to link). Each tests/unit/test_X.c names its
# objects through TEST_OBJ_X below; the default is common + wire.
TEST_OBJ_test_wire    := $(WIRE_OBJ) $(COMMON_OBJ)
TEST_OBJ_test_cfg     := $(CFG_OBJ) $(COMMON_OBJ)
TEST_OBJ_test_route   := $(ROUTING_OBJ) $(WIRE_OBJ) $(COMMON_OBJ)
TEST_OBJ_test_auth    := $(BUILD)/proxy/scram.o $(BUILD)/proxy/authfile.o $(COMMON_OBJ)
TEST_OBJ_test_migrator := $(MIGRATOR_OBJ) $(ROUTING_OBJ) $(CFG_OBJ) $(WIRE_OBJ) $(COMMON_OBJ)
TEST_OBJ_test_proxy   := $(CORE_OBJ)

.SECONDEXPANSION:
$(BUILD)/tests/%: $(BUILD)/tests/unit/%.o $$(or $$(TEST_OBJ_$$*),$$(WIRE_OBJ) $$(COMMON_OBJ))
	$(CC) $(LDFLAGS) -o $@ $^ -lcmocka $(LIBS)

unit: $(UNIT_TESTS)
	@fail=0; for t in $(UNIT_TESTS); do \
	    echo "== $$t"; timeout 120 $$t || fail=1; \
	done; exit $$fail

deps:
	@scripts/install-deps.sh

# Run again with a transaction pool of 4 per store: the drivers, the routing
# workload and pipelining, while clients share and swap backends.
POOL_PASS := $(addprefix tests/integration/,test_proxy_psycopg.py test_proxy_asyncpg.py \
	test_proxy_node.py test_routing_workload.py test_routing_drivers.py \
	test_routing_pipeline.py test_routing_asyncpg_rebind.py)

integration: all
	@tests/integration/run.sh
	@echo "== again with pool_mode = transaction, pool_size = 4: $(notdir $(POOL_PASS))"
	@PGSHIFT_POOL_MODE=transaction PGSHIFT_POOL_SIZE=4 tests/integration/run.sh $(POOL_PASS)

test: deps
	$(MAKE) all
	$(MAKE) check-layers
	$(MAKE) unit
	$(MAKE) integration

# The dependency rule of STYLE.md: wire/ and routing/ do no I/O.
check-layers:
	@if grep -nE '#include [<"](uv\.h|libpq-fe\.h|openssl/|common/log\.h)' wire/*.[ch] routing/*.[ch]; then \
	    echo "check-layers: wire/ or routing/ includes an I/O or logging header"; exit 1; fi
	@bad=$$(nm -g --defined-only $(BUILD)/pgshift | awk '{print $$3}' | \
	    grep -vE '^(px_|wire_|route_|mig_|cfg_|cm_|main$$|data_start$$|_|__)|@' || true); \
	    if [ -n "$$bad" ]; then echo "check-layers: unprefixed global symbols: $$bad"; exit 1; fi

san:
	$(MAKE) BUILD=build-san OPT="-O1 -g -fno-omit-frame-pointer" \
	    SAN_FLAGS="-fsanitize=address,undefined -fno-sanitize-recover=all" all-san

all-san: $(BUILD)/pgshift $(UNIT_TESTS)
	@fail=0; for t in $(UNIT_TESTS); do echo "== $$t"; timeout 300 $$t || fail=1; done; \
	    [ $$fail = 0 ] && PGSHIFT_BIN=$(abspath $(BUILD)/pgshift) tests/integration/run.sh

tsan:
	$(MAKE) BUILD=build-tsan OPT="-O1 -g" SAN_FLAGS="-fsanitize=thread" unit

FUZZ_SECONDS ?= 30
FUZZ_TARGETS := $(patsubst tests/fuzz/%.c,build-fuzz/%,$(wildcard tests/fuzz/fuzz_*.c))
fuzz: $(FUZZ_TARGETS)
	@for f in $(FUZZ_TARGETS); do \
	    n=$$(basename $$f); mkdir -p build-fuzz/corpus/$$n; \
	    echo "== $$n ($(FUZZ_SECONDS)s)"; \
	    $$f -max_total_time=$(FUZZ_SECONDS) -print_final_stats=0 build-fuzz/corpus/$$n \
	        $$( [ -d tests/fuzz/corpus/$$n ] && echo tests/fuzz/corpus/$$n ) || exit 1; \
	done

build-fuzz/%: tests/fuzz/%.c $(WIRE_SRC) $(COMMON_SRC) $(ROUTING_SRC) $(CFG_SRC)
	@mkdir -p build-fuzz
	clang -std=c11 -g -O1 -I. -I$(PG_INC) -D_GNU_SOURCE -fsanitize=fuzzer,address,undefined \
	    -o $@ $< $(WIRE_SRC) $(COMMON_SRC) $(ROUTING_SRC) $(CFG_SRC) -lpg_query -lpq

demo: deps all
	@scripts/demo.sh

bench: all
	@bench/run.sh

# Classifier cost per statement (cache miss / hit / decision), for bench/routing.
$(BUILD)/bench/classify_bench: $(BUILD)/bench/classify_bench.o $(ROUTING_OBJ) $(COMMON_OBJ)
	$(CC) $(LDFLAGS) -o $@ $^ -lpg_query

FORMAT_SRC = $(shell git ls-files '*.c' '*.h')
format:
	clang-format -i $(FORMAT_SRC)
format-check:
	clang-format --dry-run -Werror $(FORMAT_SRC)

clean:
	rm -rf build build-san build-tsan build-fuzz pgshift pgshift-ctl

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
