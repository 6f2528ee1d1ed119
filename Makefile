# tokengate — run `make help` for the targets.
GO       ?= go
PKGS     ?= ./...
FUZZTIME ?= 20s

.DEFAULT_GOAL := help

.PHONY: help
help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-11s %s\n", $$1, $$2}'

.PHONY: demo
demo: ## run the demo: gateway + three simulated Azure OpenAI instances
	$(GO) run ./cmd/tokengate demo

.PHONY: build
build: ## build bin/tokengate
	$(GO) build -o bin/tokengate ./cmd/tokengate

.PHONY: test
test: ## run the whole test suite with the race detector (fuzz seed corpora included)
	$(GO) test -race -count=1 $(PKGS)

.PHONY: fmt
fmt: ## fail if any Go file is not gofmt-formatted
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "not gofmt-formatted:"; echo "$$out"; exit 1; fi

.PHONY: vet
vet: ## go vet
	$(GO) vet $(PKGS)

.PHONY: lint
lint: ## golangci-lint with .golangci.yml, when it is installed
	@if command -v golangci-lint >/dev/null; then golangci-lint run; else echo "golangci-lint not installed; skipping"; fi

.PHONY: check
check: fmt vet lint test ## everything CI runs

.PHONY: fuzz
fuzz: ## run every fuzz target for FUZZTIME each
	@set -e; for pkg in $$($(GO) list ./...); do \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz' || true); do \
	    echo "== $$pkg $$f"; $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg; \
	  done; done

BENCHFLAGS ?=

.PHONY: bench
bench: ## the overhead benchmark: direct vs nginx vs tokengate (minimal and full pipeline), see docs/performance.md
	$(GO) run ./tests/bench $(BENCHFLAGS)

.PHONY: microbench
microbench: ## the Go benchmarks of the hot-path functions (allocations included)
	$(GO) test -run '^$$' -bench . -benchmem $(PKGS)
