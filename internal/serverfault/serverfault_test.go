package serverfault

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestDependency(t *testing.T) {
	foreign, err := status.New(codes.Unavailable, "x").WithDetails(&errdetails.ErrorInfo{Reason: reason, Domain: "example.com"})
	require.NoError(t, err)
	for _, tt := range []struct {
		name string
		err  error
		dep  string
		ok   bool
	}{
		{"marked", Errorf(codes.Unavailable, "key manager vault", "key manager vault: sealed"), "key manager vault", true},
		{"marked, other code", Errorf(codes.FailedPrecondition, "store", "store: %v", "down"), "store", true},
		{"connection failure", status.Error(codes.Unavailable, "connection error: desc = \"transport: dial unix: no such file\""), "", false},
		{"message that looks like one", status.Error(codes.Unavailable, "key manager vault: sealed"), "", false},
		{"another domain's ErrorInfo", foreign.Err(), "", false},
		{"not a status", errors.New("key manager vault"), "", false},
		{"context", context.DeadlineExceeded, "", false},
		{"nil", nil, "", false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dep, ok := Dependency(tt.err)
			require.Equal(t, tt.ok, ok)
			require.Equal(t, tt.dep, dep)
		})
	}
}

func TestErrorfKeepsCodeAndMessage(t *testing.T) {
	err := Errorf(codes.Unavailable, "store", "transparency log: store: %v", "dial tcp: refused")
	st := status.Convert(err)
	require.Equal(t, codes.Unavailable, st.Code())
	require.Equal(t, "transparency log: store: dial tcp: refused", st.Message())
	require.Equal(t, fmt.Sprintf("rpc error: code = Unavailable desc = %s", st.Message()), err.Error())
}
