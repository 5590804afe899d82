package main

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/hallmark-dev/hallmark/attest"
	"github.com/hallmark-dev/hallmark/attest/verify"
	"github.com/hallmark-dev/hallmark/attest/verify/pipeline"
	"github.com/hallmark-dev/hallmark/internal/wholefile"
)

// pipelineFlags are the flags of `hallmark verify` in pipeline mode, the
// mode chosen when --policy names a pipeline policy (docs/pipelines.md).
type pipelineFlags struct {
	bundleDir, server, vsa, vsaKey, vsaResource string
	asJSON                                      bool
	// logState is --log-state, in both modes.
	logState string
}

// pipelineHelp is appended to `hallmark verify --help`.
const pipelineHelp = `

Pipeline mode: when --policy names a pipeline policy (a file with
'version = 1' and step blocks, docs/pipelines.md), the whole supply chain of
one ARTIFACT is verified: the final step's attestation, back through every
step's materials to the source, every bundle fully verified against the
trusted root and every rule of the policy checked. Attestations come from
--bundle (repeatable), --bundle-dir and/or the server's log (--server,
searched by digest). The chain is printed as a tree; on refusal, the one
rule that failed. --vsa writes an SLSA Verification Summary Attestation,
signed in DSSE with --vsa-key (PEM, ECDSA P-256).`

func addPipelineFlags(cmd *cobra.Command, pf *pipelineFlags) {
	cmd.Flags().StringVar(&pf.bundleDir, "bundle-dir", "", "pipeline mode: a directory of bundles (*.json)")
	cmd.Flags().StringVar(&pf.server, "server", "", "hallmark-server's HTTP address: pipeline mode searches its log by digest; with --log-state, its checkpoint and consistency proofs")
	cmd.Flags().StringVar(&pf.logState, "log-state", "", "remember the latest checkpoint of each log in this file, and refuse a checkpoint not consistent with it (a forked log); "+
		"checkpoints of other sizes are compared with --server's consistency proofs")
	cmd.Flags().StringVar(&pf.vsa, "vsa", "", "pipeline mode: write an SLSA Verification Summary Attestation to this file")
	cmd.Flags().StringVar(&pf.vsaKey, "vsa-key", "", "pipeline mode: sign the VSA in DSSE with this key (PEM, ECDSA P-256; not readable by group or others)")
	cmd.Flags().StringVar(&pf.vsaResource, "vsa-resource-uri", "", "pipeline mode: the VSA's resourceUri (default: the ARTIFACT's file: URI)")
	cmd.Flags().BoolVar(&pf.asJSON, "json", false, "print JSON (same as --output json)")
	cmd.Long += pipelineHelp
}

// pipelinePolicy reads the --policy file and reports whether it is (or
// was meant to be) a pipeline policy: one with a top-level version, or
// anything that is not JSON, which a single-step policy always is. So a
// pipeline policy that does not parse, or lacks its version, is reported
// by the pipeline policy parser, with the position of the mistake.
func pipelinePolicy(path string) ([]byte, bool) {
	if path == "" {
		return nil, false
	}
	data, err := readFile(path, pipeline.MaxPolicySize+1)
	if err != nil {
		return nil, false
	}
	if trimmed := bytes.TrimLeft(data, " \t\r\n"); pipeline.IsPolicy(data) || len(trimmed) == 0 || trimmed[0] != '{' {
		return data, true
	}
	return nil, false
}

// runPipelineVerify is `hallmark verify --policy PIPELINE ARTIFACT`.
func runPipelineVerify(cmd *cobra.Command, args []string, policyPath string, policySrc []byte, bundlePaths []string, rootPath, output string, builderPrefixes []string, anyBuilder bool, pf pipelineFlags) error {
	if pf.asJSON {
		output = "json"
	}
	switch {
	case output != "text" && output != "json":
		return usageError(cmd, fmt.Errorf("--output is %q, want text or json", output))
	case len(args) != 1:
		return usageError(cmd, fmt.Errorf("pipeline mode verifies one ARTIFACT, %d given", len(args)))
	case rootPath == "":
		return usageError(cmd, errors.New("--trusted-root is required"))
	case len(bundlePaths) == 0 && pf.bundleDir == "" && pf.server == "":
		return usageError(cmd, errors.New("name the attestations: --bundle FILE (repeatable), --bundle-dir DIR, or --server URL to search the log"))
	}
	policy, err := pipeline.ParsePolicy(policyPath, policySrc)
	if err != nil {
		return usageError(cmd, fmt.Errorf("--policy: %w", err))
	}
	// Every step naming its builders is an identity constraint; otherwise
	// --builder-id-prefix (for every step) or --insecure-any-builder is
	// needed, as in single-step mode.
	switch constrained := policy.NamesEveryBuilder() || len(builderPrefixes) > 0; {
	case anyBuilder && constrained:
		return usageError(cmd, errors.New("--insecure-any-builder contradicts the builders named by --builder-id-prefix or every step of --policy"))
	case !anyBuilder && !constrained:
		return usageError(cmd, errors.New("no identity constraint: name the builders you trust with builder_id_prefixes in every step of --policy, "+
			"or with --builder-id-prefix, or accept any builder in the trust domain with --insecure-any-builder"))
	}
	for _, p := range builderPrefixes {
		if _, err := spiffeid.FromString(strings.TrimSuffix(p, "/")); err != nil {
			return usageError(cmd, fmt.Errorf("--builder-id-prefix %q: %w", p, err))
		}
	}
	// The pipeline policy's rules replace a single-step policy; the
	// builder constraint goes to the walk.
	opts, err := loadVerifyOptions(rootPath, "", nil, true)
	if err != nil {
		return usageError(cmd, err)
	}
	var key crypto.Signer
	if pf.vsaKey != "" {
		if pf.vsa == "" {
			return usageError(cmd, errors.New("--vsa-key signs the VSA: name the file with --vsa"))
		}
		if key, err = readVSAKey(pf.vsaKey); err != nil {
			return usageError(cmd, fmt.Errorf("--vsa-key: %w", err))
		}
	}
	var finders pipeline.Finders
	cands, err := readBundles(bundlePaths, pf.bundleDir)
	if err != nil {
		return usageError(cmd, err)
	}
	if len(cands) > 0 {
		finders = append(finders, pipeline.NewBundleSet(cands))
	}
	if pf.server != "" {
		server := pf.server
		if !strings.Contains(server, "://") {
			server = "http://" + server
		}
		finders = append(finders, &pipeline.LogSearch{BaseURL: server, Client: &http.Client{Timeout: 30 * time.Second},
			// Entries by agents no rule trusts are left out by the
			// server, and passed over here if it sends them: however
			// many of them name the artifact, they hide nothing.
			Builders: policy.SearchBuilders(builderPrefixes),
			Builder:  func(id string) bool { return policy.MayBuild(id, builderPrefixes) },
			// So are attestations of steps, or for workloads, that no
			// step allows: a CI tenant who may attest any step cannot
			// bury a released artifact under its own attestations.
			Step: func(builder, step string, ids, selectors []string) bool {
				return policy.MayAttest(builder, step, ids, selectors, builderPrefixes)
			}})
	}
	artifact, err := digestFile(args[0])
	if err != nil {
		return usageError(cmd, err)
	}

	ctx, cancel := context.WithTimeout(cmd.Context(), 5*time.Minute)
	defer cancel()
	report, err := pipeline.Verify(ctx, policy, artifact, pipeline.Options{Verify: opts, Finder: finders, BuilderIDPrefixes: builderPrefixes})
	var re *pipeline.RuleError
	if err != nil && !errors.As(err, &re) {
		// Exit 2 as for a usage error, without pointing at usage: the
		// flags were fine, a server or the deadline was not.
		return couldNotVerify(cmd, err)
	}
	// Verified as far as the bundles go; the log state may yet show a
	// checkpoint they were proven under is not the log's. Checked before
	// anything is written or printed as verified.
	var seen []verify.Checkpoint
	if re == nil {
		for _, n := range report.Chain() {
			if n.Attestation != nil {
				seen = append(seen, n.Attestation.Checkpoint)
			}
		}
		if err := checkLogState(cmd, pf.logState, pf.server, opts.TrustedRoot, seen); err != nil {
			return err
		}
	}
	if pf.vsa != "" {
		resource := pf.vsaResource
		if resource == "" {
			resource = fileURI(args[0])
		}
		if err := writeVSA(pf.vsa, report, resource, fileURI(policyPath), key); err != nil {
			return usageError(cmd, fmt.Errorf("--vsa: %w", err))
		}
	}
	out := cmd.OutOrStdout()
	if output == "json" {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		if err := enc.Encode(report); err != nil {
			return err
		}
	} else if err := report.WriteText(out); err != nil {
		return err
	}
	if re != nil {
		fmt.Fprintf(cmd.ErrOrStderr(), "hallmark verify: NOT VERIFIED: rule %s\n", re.Failure)
		return &exitError{code: exitNotVerified}
	}
	if output != "json" {
		printLogState(out, pf.logState, seen)
	}
	return nil
}

// readBundles reads the bundle files named and every *.json file of dir.
func readBundles(paths []string, dir string) ([]pipeline.Candidate, error) {
	if dir != "" {
		matches, err := filepath.Glob(filepath.Join(dir, "*.json"))
		if err != nil {
			return nil, fmt.Errorf("--bundle-dir: %w", err)
		}
		if len(matches) == 0 {
			return nil, fmt.Errorf("--bundle-dir %s: no *.json file", dir)
		}
		sort.Strings(matches)
		paths = append(slices.Clone(paths), matches...)
	}
	out := make([]pipeline.Candidate, 0, len(paths))
	for _, p := range paths {
		b, err := readFile(p, attest.MaxBundleSize+1)
		if err != nil {
			return nil, fmt.Errorf("bundle: %w", err)
		}
		out = append(out, pipeline.Candidate{Bundle: b, Origin: p, URI: fileURI(p)})
	}
	return out, nil
}

// readVSAKey reads an ECDSA P-256 private key (PEM: SEC 1 or PKCS #8)
// from a file that only its owner can read.
func readVSAKey(path string) (crypto.Signer, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("%s is readable by group or others (mode %o): chmod 600 it", path, fi.Mode().Perm())
	}
	data, err := readFile(path, 64<<10)
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, fmt.Errorf("%s: no PEM block", path)
	}
	var key any
	switch block.Type {
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(block.Bytes)
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	default:
		return nil, fmt.Errorf("%s: PEM block %q, want EC PRIVATE KEY or PRIVATE KEY", path, block.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	ec, ok := key.(*ecdsa.PrivateKey)
	if !ok || ec.Curve != elliptic.P256() {
		return nil, fmt.Errorf("%s: not an ECDSA P-256 key", path)
	}
	return ec, nil
}

// fileURI is the file: URI of path, made absolute ("" when it cannot be).
func fileURI(path string) string {
	abs, err := filepath.Abs(path)
	if err != nil {
		return ""
	}
	return (&url.URL{Scheme: "file", Path: filepath.ToSlash(abs)}).String()
}

// writeVSA writes the report's VSA, signed in DSSE when key is not nil.
func writeVSA(path string, report *pipeline.Report, resource, policyURI string, key crypto.Signer) error {
	st, err := report.VSA(pipeline.VSAOptions{ResourceURI: resource, PolicyURI: policyURI, Time: time.Now().UTC()})
	if err != nil {
		return err
	}
	out := st
	if key != nil {
		if out, err = pipeline.SignVSA(st, key); err != nil {
			return err
		}
	}
	return wholefile.Write(path, append(out, '\n'))
}
