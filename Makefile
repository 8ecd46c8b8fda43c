# Troupe: every target installs what is missing first (make deps), then configures and builds.
BUILD      ?= build
BUILD_TYPE ?= RelWithDebInfo
JOBS       ?= $(shell nproc)
# Warnings are errors in CI (CI=true) and warnings elsewhere.
WERROR     ?= $(if $(CI),ON,OFF)
CMAKE_ARGS ?=

.PHONY: all deps configure build test test-unit test-sanitize bench bench-membership-long demo fuzz clean
.PHONY: docker-base docker-image test-cluster
FUZZ_SECONDS ?= 600

all: build

deps:
	@scripts/install-deps.sh

configure: deps
	@cmake -S . -B $(BUILD) -G Ninja -DCMAKE_BUILD_TYPE=$(BUILD_TYPE) -DTROUPE_WERROR=$(WERROR) $(CMAKE_ARGS) >/dev/null

build: configure
	@cmake --build $(BUILD) -j $(JOBS)

# The whole suite: unit tests, integration tests (install + consumer, README example, ...).
test: build
	@ctest --test-dir $(BUILD) --output-on-failure -j $(JOBS) --timeout 600

test-unit: build
	@ctest --test-dir $(BUILD) -L unit --output-on-failure -j $(JOBS)

# Unit tests under AddressSanitizer + UndefinedBehaviorSanitizer (CI runs this too).
test-sanitize: deps
	@cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=Debug -DTROUPE_SANITIZE=address,undefined \
	  -DTROUPE_BUILD_BENCH=OFF -DTROUPE_BUILD_EXAMPLES=OFF -DTROUPE_WERROR=$(WERROR) >/dev/null
	@cmake --build build-asan -j $(JOBS)
	@ctest --test-dir build-asan -L unit --output-on-failure -j $(JOBS) --timeout 600

# Troupe and its peers side by side; figures to build/bench/results.json and the terminal.
bench: build
	@bench/run.sh $(BUILD)

# Membership false positives over a long stretch (one member stopped 2 s every 10 s), Troupe
# and Serf at the same time: MEMBERSHIP_FALSE_SECONDS (default 300); figures to
# build/bench/membership_long.json.
MEMBERSHIP_FALSE_SECONDS ?= 300
bench-membership-long: build
	@TROUPE_BENCH_PARTS=membership MEMBERSHIP_WORKLOADS=false_downs MEMBERSHIP_FALSE_SECONDS=$(MEMBERSHIP_FALSE_SECONDS) \
	  TROUPE_BENCH_RESULTS=membership_long.json bench/run.sh $(BUILD)

# A local three-node cluster (troupe-node processes) and a client running a workload against it.
demo: build
	@scripts/demo.sh $(BUILD)

# libFuzzer on the decoders of untrusted bytes (clang): each of FUZZ_TARGETS for FUZZ_SECONDS
# (default 600), one after the other, corpus in build-fuzz/corpus/<target>.
FUZZ_TARGETS ?= frame_fuzz gossip_fuzz packet_open_fuzz sharding_fuzz
fuzz: deps
	@TROUPE_EXTRA_PACKAGES="clang libclang-rt-14-dev" scripts/install-deps.sh
	@CC=clang CXX=clang++ cmake -S . -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DTROUPE_FUZZ=ON \
	  -DTROUPE_SANITIZE=address,undefined -DTROUPE_BUILD_BENCH=OFF -DTROUPE_BUILD_EXAMPLES=OFF >/dev/null
	@cmake --build build-fuzz -j $(JOBS) --target $(FUZZ_TARGETS)
	@for t in $(FUZZ_TARGETS); do \
	  mkdir -p build-fuzz/corpus/$$t build-fuzz/artifacts; \
	  echo "== $$t for $(FUZZ_SECONDS) s"; \
	  $$(find build-fuzz -name $$t -type f -perm -u+x | head -1) -max_total_time=$(FUZZ_SECONDS) -max_len=8192 \
	    -artifact_prefix=build-fuzz/artifacts/$$t- -print_final_stats=1 build-fuzz/corpus/$$t || exit 1; \
	done

# Docker (docker/, no registry needed): the base image troupe/bookworm:local (debootstrap, then
# docker import), the node image compiled from source inside Docker (DOCKER_IMAGE, default
# troupe/node:local), and a cluster test: docker-compose with images of the binaries built here,
# kill, pause and network partition scenarios (tests/docker/cluster_test.sh).
DOCKER_BASE  ?= troupe/bookworm:local
DOCKER_IMAGE ?= troupe/node:local
docker-base:
	@BUILD=$(BUILD) scripts/docker-base.sh

docker-image: docker-base
	@BUILD=$(BUILD) BASE=$(DOCKER_BASE) JOBS=$(JOBS) docker/build-image.sh source $(DOCKER_IMAGE)

test-cluster: build
	@BUILD=$(BUILD) tests/docker/cluster_test.sh

clean:
	rm -rf $(BUILD) build-asan build-fuzz
