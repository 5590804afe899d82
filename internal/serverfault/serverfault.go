// Package serverfault marks the errors hallmark-server answers when a
// service behind it fails (its key manager, its store, its log), so that an
// agent can tell "the server answered: Vault is down" from "no server
// answered". gRPC gives both the same code, Unavailable; the mark is a
// google.rpc.ErrorInfo detail (AIP-193) that only a server that ran the
// call attaches.
package serverfault

import (
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

const (
	// domain and reason identify the mark in ErrorInfo.
	domain = "hallmark.dev"
	reason = "DEPENDENCY_FAILED"
	// dependencyKey names, in ErrorInfo's metadata, what failed.
	dependencyKey = "dependency"
)

// Errorf returns a status error with code and message that says the server
// answered and dependency (e.g. "key manager vault", "store") failed.
func Errorf(code codes.Code, dependency, format string, args ...any) error {
	st := status.Newf(code, format, args...)
	marked, err := st.WithDetails(&errdetails.ErrorInfo{
		Reason:   reason,
		Domain:   domain,
		Metadata: map[string]string{dependencyKey: dependency},
	})
	if err != nil { // cannot happen: ErrorInfo always marshals
		return st.Err()
	}
	return marked.Err()
}

// Dependency returns what failed behind the server when err is a status
// the server marked with Errorf; ok is false for any other error,
// including every failure of the connection itself.
func Dependency(err error) (dependency string, ok bool) {
	st, isStatus := status.FromError(err)
	if !isStatus || st.Code() == codes.OK {
		return "", false
	}
	for _, d := range st.Details() {
		if info, isInfo := d.(*errdetails.ErrorInfo); isInfo && info.GetDomain() == domain && info.GetReason() == reason {
			return info.GetMetadata()[dependencyKey], true
		}
	}
	return "", false
}
