// Package pipeline verifies a whole supply chain, not one step: that an
// artifact is the product of a pipeline's final step, whose materials were
// products of the earlier steps the policy names, back to the source (a
// git commit the agent read itself), every step attested by a workload the
// policy allows for it. It is what `hallmark verify --policy PIPELINE`
// runs, and a library for admission controllers.
//
// A pipeline policy (ParsePolicy; format in docs/pipelines.md) is HCL or
// HCL's JSON syntax, decoded strictly and versioned. Verify walks from the
// artifact back to the source:
//
//  1. the final step: an attestation of the final step whose subjects
//     include the artifact;
//  2. for each step's attestation, in order: builder_id_prefixes,
//     workload_spiffe_ids, workload_selectors, sources (every git source
//     the agent recorded matches a source block: repositories, commits,
//     refs, require_clean), products (final step);
//  3. each material of the step: inside a clean work tree of an allowed
//     source (not in its .git: the repository is not the commit's
//     tree), or a product of an attestation of a step in materials_from
//     that itself passes 2 and 3;
//  4. every step of the policy is part of the chain.
//
// Attestations come from a Finder (bundles given up front, or the
// server's log searched by digest); every one is verified by
// verify.Verify (signature, log entry, timestamp, certificate chain to
// the trusted root) before anything in it is read. The Report has the
// chain with each step's verdict and, when refused, the one rule that
// failed, named by its place in the policy (step.build.workload_spiffe_ids,
// source.widget.commits, step.checkout for a missing step).
//
// Report.VSA writes an SLSA Verification Summary Attestation of the
// outcome, and SignVSA signs it in DSSE.
//
// Like package verify, it imports only packages attest and attest/verify
// of this repository.
package pipeline
