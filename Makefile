# Hallmark: make build test lint bench demo dev tools proto fuzz soak
SHELL := /bin/bash
export GOTOOLCHAIN := local
TOOLS := $(CURDIR)/.tools
export PATH := $(TOOLS)/bin:$(PATH)

PROTOS := $(shell find proto -name '*.proto')

.PHONY: build test unit e2e lint bench demo dev tools proto proto-check spire openbao protoc deploy-check postgres interop-tools fuzz soak

## build: without x/net/trace, symbols or DWARF (test/harness.BuildFlags): SPIRE hashes hallmark-agent's executable on every pid-mode call.
build:
	go build -tags grpcnotrace -ldflags='-s -w' -o bin/ ./cmd/...

## tools: SPIRE v1.13.3 and a Vault-API server (OpenBao; cached in .tools/bin, taken from PATH when
## there), protoc and its plugins.
tools: spire openbao protoc

spire:
	@./test/scripts/install-spire.sh

## openbao: `bao` or `vault` from PATH, else the OpenBao in ../shared/tools/openbao, as .tools/bin/bao.
openbao:
	@./test/scripts/install-openbao.sh

## interop-tools: cosign v3.1.3 built into .tools/bin (cached; tens of minutes cold on 2 busy cores) and sigstore-js
## (@sigstore/verify, @sigstore/bundle) from package-lock.json into test/interop/sigstorejs/node_modules.
interop-tools:
	@./test/scripts/install-cosign.sh
	@./test/scripts/install-sigstorejs.sh

## postgres: Debian's PostgreSQL server programs, for the tests' private instances (test/pgtest).
postgres:
	@./test/scripts/install-postgres.sh

protoc:
	@command -v protoc >/dev/null || ./test/scripts/apt-install.sh protobuf-compiler
	@go build -o $(TOOLS)/bin/ google.golang.org/protobuf/cmd/protoc-gen-go google.golang.org/grpc/cmd/protoc-gen-go-grpc

proto: protoc
	protoc -I proto --go_out=proto --go_opt=paths=source_relative \
	  --go-grpc_out=proto --go-grpc_opt=paths=source_relative $(PROTOS)

## proto-check fails when the committed generated code is stale.
proto-check: protoc
	@tmp=$$(mktemp -d) && trap 'rm -rf $$tmp' EXIT && \
	protoc -I proto --go_out=$$tmp --go_opt=paths=source_relative \
	  --go-grpc_out=$$tmp --go-grpc_opt=paths=source_relative $(PROTOS) && \
	diff -r -x '*.proto' -x '*_test.go' -x '*.md' $$tmp proto >/dev/null || \
	{ echo "proto: generated code is stale; run 'make proto' and commit"; exit 1; }

lint:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt needed"; exit 1; }
	go vet ./...

unit: postgres openbao
	go test -race -count=1 $$(go list ./... | grep -v /test/e2e)

e2e: tools interop-tools
	@command -v useradd >/dev/null && command -v unshare >/dev/null || ./test/scripts/apt-install.sh passwd util-linux mount
	go test -count=1 -timeout 30m -v ./test/e2e/...

## test: lint, generated-code check, deploy files, unit tests under -race, end-to-end on real SPIRE.
test: lint proto-check deploy-check unit e2e

## deploy-check: systemd-analyze verify on deploy/systemd, validate of its sample configs.
deploy-check:
	@./test/scripts/deploy-check.sh

## bench: figures against floors measured in the same run (see test/cmd/hallmark-bench).
bench: tools postgres
	go run ./test/cmd/hallmark-bench

## fuzz: every fuzz target for FUZZTIME each (default 60s; FUZZ_ONLY=FuzzX for one), from the corpora in testdata/fuzz.
FUZZTIME ?= 60s
fuzz:
	@FUZZTIME=$(FUZZTIME) FUZZ_ONLY=$(FUZZ_ONLY) ./test/scripts/fuzz.sh

## soak: SPIRE, OpenBao, two servers on PostgreSQL and two agents under load and faults for SOAK_DURATION (default 30m), then the log checked against what every step was told (test/cmd/hallmark-soak). Not part of test.
SOAK_DURATION ?= 30m
soak: tools postgres
	go run ./test/cmd/hallmark-soak -duration $(SOAK_DURATION)

## dev: SPIRE server+agent, hallmark-server+agent in the foreground; Ctrl-C stops all.
dev: tools
	go run ./test/cmd/hallmark-dev

demo: tools
	go run ./test/cmd/hallmark-dev -demo
