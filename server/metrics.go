package server

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// metrics are hallmark-server's Prometheus series, on a registry of their own.
type metrics struct {
	registry       *prometheus.Registry
	issued         *prometheus.CounterVec
	denied         *prometheus.CounterVec
	limited        *prometheus.CounterVec
	keyManagerSign *prometheus.HistogramVec
	svidRotations  prometheus.Counter
	svidExpiry     prometheus.Gauge
	caExpiry       prometheus.Gauge
	timestamps     *prometheus.CounterVec
}

// Result labels of hallmark_server_signing_certificates_total.
const (
	resultIssued  = "issued"
	resultInvalid = "invalid"
	resultDenied  = "denied"
	resultError   = "error"
	// resultGranted labels hallmark_server_timestamps_total.
	resultGranted = "granted"
)

func newMetrics() *metrics {
	m := &metrics{
		registry: prometheus.NewRegistry(),
		issued: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hallmark_server_signing_certificates_total",
			Help: "Signing certificate requests by result: issued, invalid (bad CSR), denied, error (key manager).",
		}, []string{"result"}),
		denied: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hallmark_server_authorization_denied_total",
			Help: "Calls refused because the caller's SPIFFE ID is not allowed, by method (unknown: one the server does not serve).",
		}, []string{"method"}),
		limited: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hallmark_server_calls_limited_total",
			Help: "Calls refused because their connection had the most calls under way the server takes on one, or (as their headers arrived) because their caller, not an agent, had the most requests being read the server takes from one, by method.",
		}, []string{"method"}),
		keyManagerSign: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "hallmark_server_key_manager_sign_seconds",
			Help:    "Latency of key manager signing calls, by key manager and outcome.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}, []string{"key_manager", "outcome"}),
		svidRotations: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hallmark_server_svid_rotations_total",
			Help: "Times the server's X509-SVID changed after the first.",
		}),
		svidExpiry: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "hallmark_server_svid_expiry_timestamp_seconds",
			Help: "NotAfter of the server's current X509-SVID.",
		}),
		caExpiry: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "hallmark_server_signing_ca_expiry_timestamp_seconds",
			Help: "Earliest NotAfter of the CA certificates in the chain of the last signing certificate issued: past it, the key manager certifies nothing until the signing CA is rotated (docs/rotation.md). 0 until the first issuance.",
		}),
		timestamps: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hallmark_server_timestamps_total",
			Help: "Signatures timestamped for agents as they sign (Timestamp), by result: granted, error.",
		}, []string{"result"}),
	}
	m.registry.MustRegister(m.issued, m.denied, m.limited, m.keyManagerSign, m.svidRotations, m.svidExpiry, m.caExpiry, m.timestamps,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}
