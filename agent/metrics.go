package agent

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// metrics are hallmark-agent's Prometheus series, on a registry of their own.
type metrics struct {
	registry        *prometheus.Registry
	renewals        *prometheus.CounterVec
	certExpiry      prometheus.Gauge
	certInfo        *prometheus.GaugeVec
	serverReachable prometheus.Gauge
	svidRotations   prometheus.Counter
	svidExpiry      prometheus.Gauge
	attestations    *prometheus.CounterVec
	attestSeconds   prometheus.Histogram
	logSubmissions  *prometheus.CounterVec
	denials         *prometheus.CounterVec
	attestedSteps   *prometheus.CounterVec
	exeForgeable    prometheus.Gauge
	outboxQueued    prometheus.Gauge
	outboxRefused   prometheus.Gauge
	outboxDamaged   prometheus.Counter
	// outboxRefusingWrites is 1 once the outbox refuses every write.
	outboxRefusingWrites prometheus.Gauge
	measuredFiles        prometheus.Counter
	refusedConns         *prometheus.CounterVec

	timestamps       *prometheus.CounterVec
	timestampSeconds prometheus.Histogram

	taintedRenewals  prometheus.Counter
	authoritiesWatch prometheus.Gauge
	execCanaryPassed prometheus.Gauge // the last exec canary the watch saw (Unix seconds)
}

// Results of an attestation request.
const (
	resultAttested = "attested"
	resultDenied   = "denied"
	resultError    = "error"
)

func newMetrics() *metrics {
	m := &metrics{
		registry: prometheus.NewRegistry(),
		renewals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hallmark_agent_signing_certificate_renewals_total",
			Help: "Attempts to obtain a signing certificate, by result (success, failure).",
		}, []string{"result"}),
		certExpiry: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "hallmark_agent_signing_certificate_expiry_timestamp_seconds",
			Help: "NotAfter of the held signing certificate; 0 when none is held.",
		}),
		certInfo: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "hallmark_agent_signing_certificate_info",
			Help: "1 for the held signing certificate, labelled with its serial and issuer.",
		}, []string{"serial", "issuer"}),
		serverReachable: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "hallmark_agent_server_reachable",
			Help: "1 when the last call to hallmark-server got an answer, else 0.",
		}),
		svidRotations: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hallmark_agent_svid_rotations_total",
			Help: "Times the agent's X509-SVID changed after the first.",
		}),
		svidExpiry: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "hallmark_agent_svid_expiry_timestamp_seconds",
			Help: "NotAfter of the agent's current X509-SVID.",
		}),
		attestations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hallmark_agent_attestations_total",
			Help: "Attestation requests on the local API, by result (attested, denied, error).",
		}, []string{"result"}),
		logSubmissions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hallmark_agent_log_submissions_total",
			Help: "Envelopes sent to the transparency log, by result (logged, denied, error).",
		}, []string{"result"}),
		denials: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hallmark_agent_attestation_denials_total",
			Help: "Refused attestation requests by reason (invalid_request, policy, path_escape, no_access, limits, caller_changed).",
		}, []string{"reason"}),
		exeForgeable: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "hallmark_agent_exe_selectors_forgeable",
			Help: "1 when any local user can make its /proc/PID/exe name a program it never ran (unprivileged user namespaces are open): unix:path and unix:sha256 selectors prove nothing then.",
		}),
		attestedSteps: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hallmark_agent_attested_steps_total",
			Help: "Attestations made, by step name as the allowing rule names it; \"*\" for a step a rule allows only by granting every step.",
		}, []string{"step"}),
		measuredFiles: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hallmark_agent_measured_files_total",
			Help: "Files the local API hashed for callers, products and materials.",
		}),
		refusedConns: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hallmark_agent_local_connections_refused_total",
			Help: "Connections to the local API closed at accept, by reason (limits, unidentified).",
		}, []string{"reason"}),
		outboxQueued: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "hallmark_agent_outbox_queued",
			Help: "Signed envelopes on disk waiting to be logged.",
		}),
		outboxRefused: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "hallmark_agent_outbox_refused",
			Help: "Signed envelopes the log refused for good, kept in the outbox (with their reasons, in /status) for a day.",
		}),
		outboxDamaged: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hallmark_agent_outbox_damaged_records_total",
			Help: "Damaged outbox records moved aside (into the outbox's damaged/ directory) when the agent started.",
		}),
		outboxRefusingWrites: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "hallmark_agent_outbox_refusing_writes",
			Help: "1 when the outbox refuses every write (a failed write could neither be cut back off its file nor the file rewritten): every attestation is refused until hallmark-agent restarts.",
		}),
		timestamps: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hallmark_agent_timestamps_total",
			Help: "RFC 3161 timestamps asked of the log's authority for signatures, by result (granted, error: the attestation was refused).",
		}, []string{"result"}),
		timestampSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "hallmark_agent_timestamp_seconds",
			Help:    "Time an attestation waited for its timestamp.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 18),
		}),
		attestSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "hallmark_agent_attestation_seconds",
			Help:    "Time to attest a step, from request to signed bundle.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}),
		taintedRenewals: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hallmark_agent_tainted_renewals_total",
			Help: "Signing certificate renewals started because the server tainted the CA of the held certificate, retries included.",
		}),
		execCanaryPassed: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "hallmark_agent_exec_canary_last_success_timestamp_seconds",
			Help: "When the exec watch last saw the exec canary's exec (every 30 s; the agent stops when it does not); 0 before the first.",
		}),
		authoritiesWatch: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "hallmark_agent_signing_authorities_watch_connected",
			Help: "1 while the stream of tainted signing CAs from hallmark-server is open and has delivered the current set, else 0.",
		}),
	}
	m.registry.MustRegister(m.renewals, m.certExpiry, m.certInfo, m.serverReachable, m.svidRotations, m.svidExpiry,
		m.attestations, m.attestSeconds, m.logSubmissions, m.outboxQueued, m.outboxRefused, m.outboxDamaged, m.outboxRefusingWrites, m.denials, m.attestedSteps, m.exeForgeable,
		m.timestamps, m.timestampSeconds,
		m.taintedRenewals, m.authoritiesWatch, m.measuredFiles, m.refusedConns, m.execCanaryPassed,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}
