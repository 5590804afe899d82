package agent

import "time"

// LocalLimits bound what callers of the local API may hold at once, so that
// one uid abusing the socket cannot starve another's steps or the agent.
// A zero field takes its default.
type LocalLimits struct {
	// Connections bounds the open connections in all; default 1024.
	Connections int
	// ConnectionsPerUID bounds one uid's open connections; default 64.
	ConnectionsPerUID int
	// StreamsPerConnection bounds the calls under way on one connection;
	// default 16.
	StreamsPerConnection int
	// AttestationsPerUID bounds one uid's attestations under way; more
	// wait. Default 16.
	AttestationsPerUID int
	// IdentificationsPerUID bounds one uid's calls to the workload
	// attestors under way (SPIRE's Delegated Identity API); more wait.
	// Default 4.
	IdentificationsPerUID int
	// Identifications bounds those calls in all; default 32.
	Identifications int
	// IdleTimeout closes a connection with no call under way for this
	// long; default 60s.
	IdleTimeout time.Duration
}

// Defaults of LocalLimits.
const (
	DefaultMaxConnections           = 1024
	DefaultMaxConnectionsPerUID     = 64
	DefaultMaxStreamsPerConnection  = 16
	DefaultMaxAttestationsPerUID    = 16
	DefaultMaxIdentificationsPerUID = 4
	DefaultMaxIdentifications       = 32
	DefaultIdleTimeout              = 60 * time.Second
)

func (l LocalLimits) withDefaults() LocalLimits {
	def := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&l.Connections, DefaultMaxConnections)
	def(&l.ConnectionsPerUID, DefaultMaxConnectionsPerUID)
	def(&l.StreamsPerConnection, DefaultMaxStreamsPerConnection)
	def(&l.AttestationsPerUID, DefaultMaxAttestationsPerUID)
	def(&l.IdentificationsPerUID, DefaultMaxIdentificationsPerUID)
	def(&l.Identifications, DefaultMaxIdentifications)
	if l.IdleTimeout <= 0 {
		l.IdleTimeout = DefaultIdleTimeout
	}
	return l
}
