package agentclient

import (
	"fmt"
	"strconv"
	"strings"
)

// Code is a gRPC status code (https://grpc.github.io/grpc/core/md_doc_statuscodes.html).
type Code uint32

// The codes, with gRPC's numbers.
const (
	OK                 Code = 0
	Canceled           Code = 1
	Unknown            Code = 2
	InvalidArgument    Code = 3
	DeadlineExceeded   Code = 4
	NotFound           Code = 5
	AlreadyExists      Code = 6
	PermissionDenied   Code = 7
	ResourceExhausted  Code = 8
	FailedPrecondition Code = 9
	Aborted            Code = 10
	OutOfRange         Code = 11
	Unimplemented      Code = 12
	Internal           Code = 13
	Unavailable        Code = 14
	DataLoss           Code = 15
	Unauthenticated    Code = 16
)

var codeNames = [...]string{
	"OK", "Canceled", "Unknown", "InvalidArgument", "DeadlineExceeded", "NotFound",
	"AlreadyExists", "PermissionDenied", "ResourceExhausted", "FailedPrecondition",
	"Aborted", "OutOfRange", "Unimplemented", "Internal", "Unavailable", "DataLoss",
	"Unauthenticated",
}

// String is the code's name as grpc-go's codes.Code spells it.
func (c Code) String() string {
	if int(c) < len(codeNames) {
		return codeNames[c]
	}
	return "Code(" + strconv.FormatUint(uint64(c), 10) + ")"
}

// Error is a call's failure: the agent's gRPC status, or one this client
// made up for a failure to reach it or to understand it (Unavailable
// with a message starting "connection error", Internal).
type Error struct {
	Code    Code
	Message string

	lost     bool   // the connection ended under the call (ConnectionLost)
	unserved bool   // ... before the agent served anything (Unserved)
	refused  string // ... the agent's reason, when it said why (Refused)
}

func (e *Error) Error() string {
	return fmt.Sprintf("rpc error: code = %s desc = %s", e.Code, e.Message)
}

// CodeOf returns err's code: OK for nil, Unknown for an error that is not
// an *Error.
func CodeOf(err error) Code {
	if err == nil {
		return OK
	}
	if e, ok := err.(*Error); ok {
		return e.Code
	}
	return Unknown
}

func connError(format string, a ...any) *Error {
	return &Error{Code: Unavailable, Message: "connection error: " + fmt.Sprintf(format, a...)}
}

// lostError is connError for a connection that ended (closed, broken,
// or going away) rather than one that misbehaved.
func lostError(format string, a ...any) *Error {
	e := connError(format, a...)
	e.lost = true
	return e
}

// ConnectionLost reports whether err is a call's failure because its
// connection ended before the answer: the agent closed it, it broke, or
// the agent is going away (GOAWAY: it closes idle connections, and every
// connection when it stops). A call that only reads, such as GetBundle,
// may then be made again on a new connection.
func ConnectionLost(err error) bool {
	e, ok := err.(*Error)
	return ok && e.lost
}

// Unserved reports whether err is a call's failure because the agent
// ended the connection before it served anything on it: it closed it
// before its greeting (it is stopping, or it is older than this client),
// or it refused it at accept, saying why (Refused). Either way the client
// had sent nothing but its own greeting. The agent refuses a connection at
// once when its uid already has as many open as agent.LocalLimits allows,
// so such a call may be made again on a new connection once another
// closes.
func Unserved(err error) bool {
	e, ok := err.(*Error)
	return ok && e.unserved
}

// Refused returns why the agent refused the connection of an Unserved
// err, when it said so: the agent closes a connection over its limits
// after a GOAWAY whose debug data says why.
func Refused(err error) (string, bool) {
	e, ok := err.(*Error)
	if !ok || e.refused == "" {
		return "", false
	}
	return e.refused, true
}

// decodeMessage undoes the percent-encoding of grpc-message (gRPC over
// HTTP/2, "Responses"): a '%' and two hex digits stand for a byte; a '%'
// not followed by two hex digits stands for itself.
func decodeMessage(s string) string {
	if !strings.Contains(s, "%") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '%' && i+2 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+3], 16, 8); err == nil {
				b.WriteByte(byte(v))
				i += 2
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// httpStatusCode maps the HTTP status of a response that is not gRPC's to
// a code, as gRPC's clients do ("HTTP to gRPC Status Code Mapping").
func httpStatusCode(status int) Code {
	switch status {
	case 400:
		return Internal
	case 401:
		return Unauthenticated
	case 403:
		return PermissionDenied
	case 404:
		return Unimplemented
	case 429, 502, 503, 504:
		return Unavailable
	}
	return Unknown
}
