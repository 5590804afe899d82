// Package agentstatus is what hallmark-agent's /status endpoint reports,
// as JSON: the agent serves it and the hallmark CLI reads it. It holds
// types only, so that the CLI, which every build step starts, need not
// link the agent.
package agentstatus

import "time"

// Status is what /status reports: public facts only, never key material.
type Status struct {
	SPIFFEID           string       `json:"spiffe_id,omitempty"`
	SVIDSerial         string       `json:"svid_serial,omitempty"`
	SVIDNotAfter       *time.Time   `json:"svid_not_after,omitempty"`
	Server             ServerStatus `json:"server"`
	SigningCertificate *CertStatus  `json:"signing_certificate,omitempty"`
	Renewals           int          `json:"renewals"`
	RenewalFailures    int          `json:"renewal_failures"`
	// RenewalError is why the last renewal failed; empty once one
	// succeeds. The server's key manager faults end in "; fix: ...".
	RenewalError  string       `json:"renewal_error,omitempty"`
	SVIDRotations int          `json:"svid_rotations"`
	Policy        PolicyStatus `json:"policy"`
	// Outbox is nil when the agent keeps none (no data_dir).
	Outbox *OutboxStatus `json:"outbox,omitempty"`
	// ExeSelectorsForgeable, when set, says why any local user can make
	// its executable look like another program's on this host: selectors
	// read from the executable prove nothing there (docs/security.md).
	ExeSelectorsForgeable string `json:"exe_selectors_forgeable,omitempty"`
}

// ServerStatus describes the agent's view of hallmark-server.
type ServerStatus struct {
	// Address is every configured server address, comma-separated.
	Address string `json:"address"`
	// Addresses lists them: replicas the agent spreads its calls over.
	Addresses []string `json:"addresses,omitempty"`
	SPIFFEID  string   `json:"spiffe_id"`
	Reachable bool     `json:"reachable"`
	LastError string   `json:"last_error,omitempty"`
}

// CertStatus describes the held signing certificate.
type CertStatus struct {
	Serial    string    `json:"serial"`
	Issuer    string    `json:"issuer"`
	URISANs   []string  `json:"uri_sans"`
	NotBefore time.Time `json:"not_before"`
	NotAfter  time.Time `json:"not_after"`
	RenewAt   time.Time `json:"renew_at"`
	ChainPEM  string    `json:"chain_pem"`

	// IssuerSHA256 is the hex SHA-256 of the issuing CA certificate's DER,
	// as the server names tainted CAs.
	IssuerSHA256 string `json:"issuer_sha256,omitempty"`
}

// PolicyStatus says which attestation policy is in force.
type PolicyStatus struct {
	Source   string   `json:"source"`
	Revision string   `json:"revision,omitempty"`
	Rules    []string `json:"rules"`
}

// OutboxStatus describes the queue of attestations on their way to the log.
type OutboxStatus struct {
	// Queued are signed and on disk, not logged yet.
	Queued int `json:"queued"`
	// Refused is how many the log refused for good (kept a day after).
	Refused int `json:"refused"`
	// RecentRefusals are the latest of them, newest first.
	RecentRefusals []Refusal `json:"recent_refusals,omitempty"`
	// Damaged counts damaged records moved aside, kept in DamagedDir
	// until an operator removes them.
	Damaged    int    `json:"damaged"`
	DamagedDir string `json:"damaged_dir,omitempty"`
	// RefusingWrites, when set, says why the outbox refuses every write
	// (and so every attestation) until hallmark-agent restarts.
	RefusingWrites string `json:"refusing_writes,omitempty"`
}

// Refusal is one attestation the log refused.
type Refusal struct {
	InvocationID string    `json:"invocation_id"`
	Reason       string    `json:"reason"`
	At           time.Time `json:"at"`
}
