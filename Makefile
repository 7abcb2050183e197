# Entry points. `make test` is what CI runs (.ci/run); `make dev` runs the
# engine for real; `make release` writes what a release ships into dist/.
# Vault itself comes from scripts/vault.sh: `vault` on PATH when it is
# recent enough, else a one-time build cached outside the tree.

MODULE      := github.com/teletracker/vault-plugin-secrets-teletracker
PLUGIN      := vault-plugin-secrets-teletracker
# The version is the vX.Y.Z tag of the commit, or what git describe says
# between tags (v0.2.0-3-gabc1234, -dirty with uncommitted changes).
GIT_VERSION := $(shell git describe --tags --match 'v[0-9]*' --dirty 2>/dev/null)
VERSION     ?= $(or $(GIT_VERSION),v0.0.0-dev)
LDFLAGS     := -X $(MODULE).Version=$(VERSION)
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2
FUZZTIME    ?= 60s

# make release: every archive's files and the image carry the commit's time.
# PLATFORMS (os/arch list) narrows it; by default, all that scripts/release lists.
IMAGE       ?= ghcr.io/teletracker/$(PLUGIN)
GIT_EPOCH   := $(shell git log -1 --format=%ct 2>/dev/null)
SOURCE_DATE_EPOCH ?= $(or $(GIT_EPOCH),0)
REVISION    ?= $(shell git rev-parse HEAD 2>/dev/null)

export VERSION

.PHONY: build fakett vault test lint unit rules e2e e2e-default e2e-named release release-test dev dev-stop bench bench-scale soak sim ha-test fuzz clean

build:
	go build -trimpath -ldflags "$(LDFLAGS)" -o bin/$(PLUGIN) ./cmd/$(PLUGIN)

fakett:
	go build -trimpath -o bin/fakett ./cmd/fakett

vault:
	@scripts/vault.sh >/dev/null

# Vault's one-time build (minutes) runs beside the linters and unit tests.
# Then the release is built once, for its checks and the e2e tests, for the
# two platforms the image needs: each other platform would add about a
# minute of compiling on a fresh two-core machine.
test:
	@$(MAKE) --no-print-directory -j2 --output-sync=target vault lint unit rules
	@$(MAKE) --no-print-directory release-test e2e PLATFORMS="linux/amd64 linux/arm64"

lint:
	go vet ./...
	@out=$$(gofmt -l $$(find . -name '*.go' -not -path './.cache/*')); \
	  if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	go run $(STATICCHECK) ./...

# The engine's tests run twice: against the default account and against a
# named one (TELETRACKER_TEST_ACCOUNT), so that every promise held for the
# one is held for the other.
unit:
	go test -race -count=1 -parallel 8 . ./internal/... ./cmd/...
	TELETRACKER_TEST_ACCOUNT=fleet-7 go test -race -count=1 -parallel 8 .

# The Prometheus example: the config with the alert rules it loads (its token
# and CA files are empty stand-ins), then the rules' unit tests. promtool comes
# from scripts/promtool.sh.
rules:
	@promtool=$$(scripts/promtool.sh) && dir=$$(mktemp -d) && trap 'rm -rf "$$dir"' EXIT && \
	  cp examples/prometheus/prometheus.yml examples/prometheus/alerts.yml "$$dir" && \
	  touch "$$dir/vault-token" "$$dir/vault-ca.pem" && \
	  (cd "$$dir" && "$$promtool" check config prometheus.yml) && \
	  "$$promtool" test rules examples/prometheus/alerts_test.yml

# The e2e tests run twice: for the default account, and then for a named
# one (TELETRACKER_E2E_ACCOUNT), for which the tests of the failure seams
# run (restart, Retry-After, Vault Agent, HA failover, soak) and the others
# skip, saying why. One after the other, so that their timings do not share
# the two cores: the named run adds about 80 s to the default run's 110 s.
# e2e-default and e2e-named are e2e's halves: they build nothing.
E2E_TEST = VAULT_BIN=$$(scripts/vault.sh) PLUGIN_BIN=$(CURDIR)/bin/$(PLUGIN) FAKETT_BIN=$(CURDIR)/bin/fakett \
	  DIST_DIR=$(CURDIR)/dist go test -count=1 -parallel 4 -timeout 20m ./e2e/
e2e: build fakett vault release
	@$(MAKE) --no-print-directory e2e-default e2e-named

e2e-default:
	$(E2E_TEST)

e2e-named:
	TELETRACKER_E2E_ACCOUNT=fleet-7 $(E2E_TEST)

# Archives, image and sums for every platform in dist/, the same bytes for
# the same commit (scripts/release; -h lists its flags).
release:
	go run ./scripts/release -dist dist -version $(VERSION) $(if $(PLATFORMS),-platforms "$(PLATFORMS)") \
	  -image $(IMAGE) -revision "$(REVISION)" -source-date-epoch $(SOURCE_DATE_EPOCH)

# Checks dist/: sums, archives, image, and a second build of linux/amd64
# from an empty build cache that must give the same binary.
release-test: release
	DIST_DIR=$(CURDIR)/dist IMAGE=$(IMAGE) SOURCE_DATE_EPOCH=$(SOURCE_DATE_EPOCH) \
	  go test -count=1 -timeout 15m ./scripts/release/

dev: build fakett
	@scripts/dev.sh start

dev-stop:
	@scripts/dev.sh stop

# Measurements on one Vault dev server; writes BENCHMARKS.md (under 10 minutes).
bench: build fakett
	@scripts/bench/run.sh

# The cost as mounts grow, 1 to 1,000 in one plugin process, and as one
# mount's accounts grow, 1 to 10,000, with the herds of issue 18 (1,000
# accounts in a real Vault, 10,000 and 100,000 simulated); writes the Scale
# and Accounts in one mount sections of BENCHMARKS.md (about 31 minutes).
bench-scale: build fakett
	@scripts/bench/scale.sh

# The e2e soak for 20 minutes with 10-minute tokens instead of 60 s with
# 30-second ones: no read may fail; prints its figures.
SOAK_DURATION       ?= 20m
SOAK_TOKEN_LIFETIME ?= 10m
soak: build fakett vault
	VAULT_BIN=$$(scripts/vault.sh) PLUGIN_BIN=$(CURDIR)/bin/$(PLUGIN) FAKETT_BIN=$(CURDIR)/bin/fakett \
	  SOAK_DURATION=$(SOAK_DURATION) SOAK_TOKEN_LIFETIME=$(SOAK_TOKEN_LIFETIME) \
	  go test -count=1 -timeout 60m -run '^TestSoak$$' -v ./e2e/

# The deterministic simulation (sim_test.go) for SIM_DURATION from a seed
# of the clock: nodes, storage, Teletracker and time, all in process, with
# every fault the schedule can make. make unit runs seeds 1 to 225 (-sim.seeds,
# about a minute under -race on two cores), the same on every machine.
# A failure prints its seed and a shortened schedule that replays it.
SIM_DURATION ?= 10m
sim:
	go test -race -count=1 -timeout 0 -run '^TestSim$$' . -sim.duration=$(SIM_DURATION) -sim.random -v

# The HA failover test alone and verbosely (make test runs it with the rest).
ha-test:
	@scripts/ha-test.sh

fuzz:
	go test -run '^$$' -fuzz '^FuzzParseResponse$$' -fuzztime $(FUZZTIME) .
	go test -run '^$$' -fuzz '^FuzzConfigWrite$$' -fuzztime $(FUZZTIME) .

clean:
	rm -rf bin dist
