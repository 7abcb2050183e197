# Entry points. `make test` is what CI runs (.ci/run); `make dev` runs the
# engine for real. Vault itself comes from scripts/vault.sh: `vault` on PATH
# when it is recent enough, else a one-time build cached outside the tree.

MODULE      := github.com/teletracker/vault-plugin-secrets-teletracker
PLUGIN      := vault-plugin-secrets-teletracker
VERSION     ?= v0.1.0
LDFLAGS     := -X $(MODULE).Version=$(VERSION)
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2
FUZZTIME    ?= 60s

export VERSION

.PHONY: build fakett vault test lint unit e2e dev dev-stop bench bench-scale soak ha-test fuzz clean

build:
	go build -trimpath -ldflags "$(LDFLAGS)" -o bin/$(PLUGIN) ./cmd/$(PLUGIN)

fakett:
	go build -trimpath -o bin/fakett ./cmd/fakett

vault:
	@scripts/vault.sh >/dev/null

# Vault's one-time build (minutes) runs beside the linters and unit tests.
test:
	@$(MAKE) --no-print-directory -j2 --output-sync=target vault lint unit
	@$(MAKE) --no-print-directory e2e

lint:
	go vet ./...
	@out=$$(gofmt -l $$(find . -name '*.go' -not -path './.cache/*')); \
	  if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	go run $(STATICCHECK) ./...

unit:
	go test -race -count=1 -parallel 8 . ./internal/... ./cmd/...

e2e: build fakett vault
	VAULT_BIN=$$(scripts/vault.sh) PLUGIN_BIN=$(CURDIR)/bin/$(PLUGIN) FAKETT_BIN=$(CURDIR)/bin/fakett \
	  go test -count=1 -parallel 4 -timeout 20m ./e2e/

dev: build fakett
	@scripts/dev.sh start

dev-stop:
	@scripts/dev.sh stop

# Measurements on one Vault dev server; writes BENCHMARKS.md (under 10 minutes).
bench: build fakett
	@scripts/bench/run.sh

# The cost as mounts grow, 1 to 1,000 in one plugin process; writes the Scale
# section of BENCHMARKS.md (under 20 minutes).
bench-scale: build fakett
	@scripts/bench/scale.sh

# The e2e soak for 10 minutes instead of 60 s; prints its figures.
soak: build fakett vault
	VAULT_BIN=$$(scripts/vault.sh) PLUGIN_BIN=$(CURDIR)/bin/$(PLUGIN) FAKETT_BIN=$(CURDIR)/bin/fakett SOAK_DURATION=10m \
	  go test -count=1 -timeout 30m -run '^TestSoak$$' -v ./e2e/

# The HA failover test alone and verbosely (make test runs it with the rest).
ha-test:
	@scripts/ha-test.sh

fuzz:
	go test -run '^$$' -fuzz '^FuzzParseResponse$$' -fuzztime $(FUZZTIME) .
	go test -run '^$$' -fuzz '^FuzzConfigWrite$$' -fuzztime $(FUZZTIME) .

clean:
	rm -rf bin
