# smtpgw — build, run and test. `make test` is what CI runs.
GO        ?= go
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -X main.version=$(VERSION)
PKGS      := ./...

.PHONY: all build run test test-short faulttest vet fuzz bench clean

all: build

## build: compile ./smtpgw
build:
	$(GO) build -ldflags "$(LDFLAGS)" -o smtpgw ./cmd/smtpgw

## run: start the gateway on the embedded SQLite store (./data)
run:
	$(GO) run -ldflags "$(LDFLAGS)" ./cmd/smtpgw serve

STATICCHECK ?= honnef.co/go/tools/cmd/staticcheck@v0.8.2

## vet: static checks (gofmt, go mod tidy -diff, go vet, staticcheck)
vet:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { echo "gofmt needed on:"; gofmt -l $$(git ls-files '*.go'); exit 1; }
	@$(GO) mod tidy -diff >/dev/null || { echo "go mod tidy would change go.mod/go.sum:"; $(GO) mod tidy -diff; exit 1; }
	$(GO) vet $(PKGS)
	$(GO) run $(STATICCHECK) $(PKGS)

## test: vet, then every test with the race detector (needs PostgreSQL, see README)
test: vet
	$(GO) test -race -count=1 -timeout 15m $(PKGS)

## test-short: the same without the race detector, faster while developing
test-short:
	$(GO) test -count=1 $(PKGS)

## faulttest: only the fault tests (frozen and stopped PostgreSQL on a private
## cluster, a full tmpfs, SIGKILL under load); `make test` runs them too.
## Needs root (tmpfs mount, SIGSTOP of the cluster) and PostgreSQL's server
## binaries (apt-get install postgresql).
faulttest:
	$(GO) test -race -count=1 -timeout 10m -run '^(TestFault|TestKill)' -v ./tests/

## fuzz: run every fuzz target of every package for FUZZTIME each (default 30s)
FUZZTIME ?= 30s
fuzz:
	@set -e; for f in $$(git grep -l '^func Fuzz' -- '*_test.go'); do \
		for target in $$(sed -n 's/^func \(Fuzz[A-Za-z0-9_]*\)(.*/\1/p' $$f); do \
			echo "fuzz ./$$(dirname $$f) $$target"; \
			$(GO) test -run '^$$' -fuzz "^$$target$$" -fuzztime $(FUZZTIME) ./$$(dirname $$f)/; \
		done; \
	done

## bench: Go benchmarks of the hot paths (see docs/benchmarks.md)
bench:
	$(GO) test -run '^$$' -bench . -benchmem ./auth/ ./store/ ./smtpd/ ./relay/

clean:
	rm -f smtpgw
