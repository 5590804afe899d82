package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/spf13/cobra"

	"github.com/hallmark-dev/hallmark/attest"
	"github.com/hallmark-dev/hallmark/attest/verify"
)

// Exit codes of `hallmark verify`.
const (
	exitNotVerified = 1
	exitUsage       = 2
)

func verifyCmd() *cobra.Command {
	var (
		rootPath, policyPath, output string
		bundlePaths, builderPrefixes []string
		anyBuilder                   bool
		pf                           pipelineFlags
	)
	cmd := &cobra.Command{
		Use:   "verify ARTIFACT... --bundle FILE --trusted-root FILE (--builder-id-prefix ID | --policy FILE | --insecure-any-builder) [--output text|json]",
		Short: "Verify artifacts against a Hallmark bundle, offline",
		Long: `Check that the bundle is a Hallmark attestation of every ARTIFACT, trusted
under the trusted root the Hallmark server publishes, and allowed by the
policy if one is given. Nothing is fetched; the only time used is the
bundle's RFC 3161 timestamp.

Verify refuses to guess whom to trust: name the builders (the agents'
SPIFFE IDs) with --builder-id-prefix, or with builder_id_prefixes in a
--policy. --insecure-any-builder accepts any agent the trusted root vouches
for instead, which is every agent in the trust domain.

Exit status: 0 verified; 1 not verified (the failing check is printed:
bundle, signature, tlog, timestamp, validity, chain, statement, subject, predicate or
policy); 2 usage error (bad flags, no identity constraint, unreadable or
invalid input files).

A policy file is JSON; each list that is present must be satisfied
(workload_selectors: all of them):

  {
    "builder_id_prefixes": ["spiffe://example.org/hallmark/agent"],
    "steps": ["build"],
    "workload_spiffe_ids": ["spiffe://example.org/ci/runner/widget"],
    "workload_selectors": ["unix:uid:1001", "unix:path:/usr/local/bin/hallmark"]
  }`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return usageError(cmd, errors.New("name at least one ARTIFACT to verify"))
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			if src, ok := pipelinePolicy(policyPath); ok {
				return runPipelineVerify(cmd, args, policyPath, src, bundlePaths, rootPath, output, builderPrefixes, anyBuilder, pf)
			}
			if pf.asJSON {
				output = "json"
			}
			switch {
			case output != "text" && output != "json":
				return usageError(cmd, fmt.Errorf("--output is %q, want text or json", output))
			case len(bundlePaths) != 1:
				return usageError(cmd, errors.New("--bundle is required, once (several bundles: use a pipeline policy)"))
			case rootPath == "":
				return usageError(cmd, errors.New("--trusted-root is required"))
			case pf.server != "" && pf.logState == "":
				return usageError(cmd, errors.New("--server: a single bundle is verified offline; the server is asked only for --log-state"))
			}
			opts, err := loadVerifyOptions(rootPath, policyPath, builderPrefixes, anyBuilder)
			if err != nil {
				return usageError(cmd, err)
			}
			bundle, err := readFile(bundlePaths[0], attest.MaxBundleSize+1) // one byte over: ParseBundle names the limit
			if err != nil {
				return usageError(cmd, fmt.Errorf("--bundle: %w", err))
			}
			digests := make([]verify.Digest, 0, len(args))
			for _, a := range args {
				d, err := digestFile(a)
				if err != nil {
					return usageError(cmd, err)
				}
				digests = append(digests, d)
			}

			res, err := verify.Verify(bundle, digests, opts)
			var ce *verify.CheckError
			if errors.As(err, &ce) {
				return reportNotVerified(cmd, output, ce)
			}
			if err != nil {
				return usageError(cmd, err)
			}
			// Verified as far as the bundle goes; the log state may yet
			// show its checkpoint is not the log's.
			seen := []verify.Checkpoint{res.Checkpoint}
			if err := checkLogState(cmd, pf.logState, pf.server, opts.TrustedRoot, seen); err != nil {
				return err
			}
			if err := reportVerified(cmd.OutOrStdout(), output, args, res); err != nil {
				return err
			}
			if output != "json" {
				printLogState(cmd.OutOrStdout(), pf.logState, seen)
			}
			return nil
		},
	}
	cmd.Flags().StringArrayVar(&bundlePaths, "bundle", nil, "the Sigstore bundle (JSON) attesting the artifacts (pipeline mode: repeatable)")
	cmd.Flags().StringVar(&rootPath, "trusted-root", "", "the trusted root (JSON) published by the Hallmark server")
	cmd.Flags().StringVar(&policyPath, "policy", "", "a policy (JSON) restricting builders, steps and workloads, or a pipeline policy")
	cmd.Flags().StringArrayVar(&builderPrefixes, "builder-id-prefix", nil, "accept only builders (agent SPIFFE IDs) at or under this ID; repeatable")
	cmd.Flags().BoolVar(&anyBuilder, "insecure-any-builder", false, "accept any builder the trusted root vouches for (every agent in the trust domain)")
	cmd.Flags().StringVar(&output, "output", "text", "text or json")
	addPipelineFlags(cmd, &pf)
	cmd.SetFlagErrorFunc(usageError)
	return cmd
}

// usageError reports err with a pointer to --help and exits 2.
func usageError(cmd *cobra.Command, err error) error {
	fmt.Fprintf(cmd.ErrOrStderr(), "hallmark verify: %v\nRun 'hallmark verify --help' for usage.\n", err)
	return &exitError{code: exitUsage}
}

// errNoIdentity is the usage error of a verify that names no builder.
var errNoIdentity = errors.New("no identity constraint: name the builders you trust with --builder-id-prefix " +
	"(or builder_id_prefixes in --policy), or accept any builder in the trust domain with --insecure-any-builder")

func loadVerifyOptions(rootPath, policyPath string, builderPrefixes []string, anyBuilder bool) (verify.Options, error) {
	data, err := readFile(rootPath, 16<<20)
	if err != nil {
		return verify.Options{}, fmt.Errorf("--trusted-root: %w", err)
	}
	root, err := verify.ParseTrustedRoot(data)
	if err != nil {
		return verify.Options{}, fmt.Errorf("--trusted-root %s: %w", rootPath, err)
	}
	opts := verify.Options{TrustedRoot: root}
	if policyPath != "" {
		data, err := readFile(policyPath, 1<<20)
		if err != nil {
			return verify.Options{}, fmt.Errorf("--policy: %w", err)
		}
		if opts.Policy, err = verify.ParsePolicy(data); err != nil {
			return verify.Options{}, fmt.Errorf("--policy %s: %w", policyPath, err)
		}
	}
	if len(builderPrefixes) > 0 {
		if opts.Policy == nil {
			opts.Policy = &verify.Policy{}
		}
		opts.Policy.BuilderIDPrefixes = append(opts.Policy.BuilderIDPrefixes, builderPrefixes...)
		if err := opts.Policy.Validate(); err != nil {
			return verify.Options{}, fmt.Errorf("--builder-id-prefix: %w", err)
		}
	}
	switch {
	case anyBuilder && opts.Policy.ConstrainsBuilder():
		return verify.Options{}, errors.New("--insecure-any-builder contradicts the builders named by --builder-id-prefix or --policy")
	case !anyBuilder && !opts.Policy.ConstrainsBuilder():
		return verify.Options{}, errNoIdentity
	}
	return opts, nil
}

// readFile reads at most limit bytes of a regular file.
func readFile(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, limit))
}

func digestFile(path string) (verify.Digest, error) {
	f, err := os.Open(path)
	if err != nil {
		return verify.Digest{}, err
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil {
		return verify.Digest{}, err
	} else if !fi.Mode().IsRegular() {
		return verify.Digest{}, fmt.Errorf("%s is not a regular file", path)
	}
	return verify.DigestReader(path, f)
}

func reportNotVerified(cmd *cobra.Command, output string, ce *verify.CheckError) error {
	fmt.Fprintf(cmd.ErrOrStderr(), "hallmark verify: NOT VERIFIED: %s check failed: %v\n", ce.Check, ce.Err)
	if output == "json" {
		enc := json.NewEncoder(cmd.OutOrStdout())
		enc.SetIndent("", "  ")
		if err := enc.Encode(struct {
			Verified bool   `json:"verified"`
			Check    string `json:"check"`
			Error    string `json:"error"`
		}{false, ce.Check, ce.Err.Error()}); err != nil {
			return err
		}
	}
	return &exitError{code: exitNotVerified}
}

// reportVerified prints the result; paths are the artifacts as given, in
// the order of res.Artifacts.
func reportVerified(w io.Writer, output string, paths []string, res *verify.Result) error {
	if output == "json" {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(struct {
			Verified bool           `json:"verified"`
			Result   *verify.Result `json:"result"`
		}{true, res})
	}
	// What the statement and certificate say is printed as the terminal
	// shows it only when it is plain text: a subject name is the step's
	// choice, and may carry escape sequences that would rewrite the
	// consumer's screen (an outside review forged a "verified" line so).
	for i, a := range res.Artifacts {
		fmt.Fprintf(w, "verified: %s (subject %s, sha256 %s)\n", paths[i], plain(a.Name), a.SHA256)
	}
	fmt.Fprintf(w, "  builder:   %s\n", plain(res.BuilderID))
	fmt.Fprintf(w, "  step:      %s\n", plain(res.Step))
	ids := "(no SPIFFE ID)"
	if len(res.Workload.SPIFFEIDs) > 0 {
		ids = plain(strings.Join(res.Workload.SPIFFEIDs, ", "))
	}
	fmt.Fprintf(w, "  workload:  %s (pid %d, uid %d, gid %d)\n", ids, res.Workload.PID, res.Workload.UID, res.Workload.GID)
	fmt.Fprintf(w, "  issuer:    %s\n", plain(res.Issuer))
	fmt.Fprintf(w, "  signed at: %s (RFC 3161 timestamp)\n", res.SignedAt.UTC().Format(time.RFC3339))
	fmt.Fprintf(w, "  log entry: %d in log %s\n", res.LogIndex, res.LogID)
	return nil
}

// plain is s when it is printable text (letters, marks, numbers,
// punctuation, symbols and the space), else s quoted as a Go string, its
// control characters and invalid UTF-8 escaped.
func plain(s string) string {
	for _, r := range s {
		if r == utf8.RuneError || (r != ' ' && !unicode.IsGraphic(r)) || unicode.In(r, unicode.Bidi_Control) {
			return strconv.Quote(s)
		}
	}
	return s
}
