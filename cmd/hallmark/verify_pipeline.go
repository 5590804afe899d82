package main

import (
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
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/hallmark-dev/hallmark/attest"
	"github.com/hallmark-dev/hallmark/attest/verify/pipeline"
)

// pipelineFlags are the flags of `hallmark verify` in pipeline mode, the
// mode chosen when --policy names a pipeline policy (docs/pipelines.md).
type pipelineFlags struct {
	bundleDir, server, vsa, vsaKey, vsaResource string
	asJSON                                      bool
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
	cmd.Flags().StringVar(&pf.server, "server", "", "pipeline mode: hallmark-server's HTTP address, to search its log by digest")
	cmd.Flags().StringVar(&pf.vsa, "vsa", "", "pipeline mode: write an SLSA Verification Summary Attestation to this file")
	cmd.Flags().StringVar(&pf.vsaKey, "vsa-key", "", "pipeline mode: sign the VSA in DSSE with this key (PEM, ECDSA P-256; not readable by group or others)")
	cmd.Flags().StringVar(&pf.vsaResource, "vsa-resource-uri", "", "pipeline mode: the VSA's resourceUri (default: the ARTIFACT as given)")
	cmd.Flags().BoolVar(&pf.asJSON, "json", false, "print JSON (same as --output json)")
	cmd.Long += pipelineHelp
}

// pipelinePolicy reads the --policy file and reports whether it is a
// pipeline policy.
func pipelinePolicy(path string) ([]byte, bool) {
	if path == "" {
		return nil, false
	}
	data, err := readFile(path, pipeline.MaxPolicySize+1)
	if err != nil || !pipeline.IsPolicy(data) {
		return nil, false
	}
	return data, true
}

// runPipelineVerify is `hallmark verify --policy PIPELINE ARTIFACT`.
func runPipelineVerify(cmd *cobra.Command, args []string, policyPath string, policySrc []byte, bundlePaths []string, rootPath, output string, pf pipelineFlags) error {
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
	opts, err := loadVerifyOptions(rootPath, "")
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
	var sources pipeline.Sources
	cands, err := readBundles(bundlePaths, pf.bundleDir)
	if err != nil {
		return usageError(cmd, err)
	}
	if len(cands) > 0 {
		sources = append(sources, pipeline.NewBundleSet(cands))
	}
	if pf.server != "" {
		server := pf.server
		if !strings.Contains(server, "://") {
			server = "http://" + server
		}
		sources = append(sources, &pipeline.LogSearch{BaseURL: server, Client: &http.Client{Timeout: 30 * time.Second}})
	}
	artifact, err := digestFile(args[0])
	if err != nil {
		return usageError(cmd, err)
	}

	ctx, cancel := context.WithTimeout(cmd.Context(), 5*time.Minute)
	defer cancel()
	report, err := pipeline.Verify(ctx, policy, artifact, pipeline.Options{Verify: opts, Source: sources})
	var re *pipeline.RuleError
	if err != nil && !errors.As(err, &re) {
		return usageError(cmd, err)
	}
	if pf.vsa != "" {
		resource := pf.vsaResource
		if resource == "" {
			resource = args[0]
		}
		if err := writeVSA(pf.vsa, report, resource, policyPath, key); err != nil {
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
		fmt.Fprintf(cmd.ErrOrStderr(), "hallmark verify: NOT VERIFIED: rule %s: %s\n", re.Failure.Rule, re.Failure.Reason)
		return &exitError{code: exitNotVerified}
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
		out = append(out, pipeline.Candidate{Bundle: b, Origin: p})
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

// writeVSA writes the report's VSA, signed in DSSE when key is not nil.
func writeVSA(path string, report *pipeline.Report, resource, policyPath string, key crypto.Signer) error {
	st, err := report.VSA(pipeline.VSAOptions{ResourceURI: resource, PolicyURI: policyPath, Time: time.Now().UTC()})
	if err != nil {
		return err
	}
	out := st
	if key != nil {
		if out, err = pipeline.SignVSA(st, key); err != nil {
			return err
		}
	}
	return os.WriteFile(path, append(out, '\n'), 0o644)
}
