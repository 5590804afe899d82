package attest

import (
	"encoding/base64"
	"errors"
	"slices"
	"strconv"
	"time"
	"unicode/utf8"
)

// This file writes the JSON that Sign signs and returns without going
// through protojson: the same bytes MarshalStatement(NewStatement(s)) and
// MarshalBundle(NewBundle(...)) produce, at a fraction of the cost. The
// encoding follows protojson's rules: message fields in schema order,
// Struct keys sorted, empty fields omitted, strings escaped as protojson
// escapes them, bytes in padded standard base64, timestamps in UTC with 0,
// 3, 6 or 9 fractional digits. Tests compare it byte for byte with the
// protojson path.

// Range of a google.protobuf.Timestamp: 0001-01-01T00:00:00Z to
// 9999-12-31T23:59:59.999999999Z.
const (
	minTimestampSeconds = -62135596800
	maxTimestampSeconds = 253402300799
)

var errInvalidUTF8 = errors.New("attest: string is not valid UTF-8")

// statementJSON returns what MarshalStatement(NewStatement(s)) returns, and
// fails where NewStatement fails. The provenance it writes passes in-toto's
// Validate by construction: the build type, external parameters (always
// holding the step) and builder ID are never empty, and every resource
// descriptor has a name and a SHA-256 of 64 hex digits.
func statementJSON(s Step) ([]byte, error) {
	if err := checkStep(s); err != nil {
		return nil, err
	}
	products, err := sortedArtifacts("product", s.Products)
	if err != nil {
		return nil, err
	}
	if len(products) == 0 {
		return nil, errNoProducts
	}
	materials, err := sortedArtifacts("material", s.Materials)
	if err != nil {
		return nil, err
	}
	sources, err := sortedSources(s.Sources)
	if err != nil {
		return nil, err
	}
	if !validTimestamp(s.StartedOn) || !validTimestamp(s.FinishedOn) {
		// Rare; NewStatement words the error as the validator does.
		if _, err := NewStatement(s); err != nil {
			return nil, err
		}
		return nil, errors.New("attest: step time outside the range of a protobuf timestamp")
	}

	b := make([]byte, 0, statementSizeHint(s, len(products)+len(materials)))
	b = append(b, `{"_type":"https://in-toto.io/Statement/v1","subject":[`...)
	for i, p := range products {
		if i > 0 {
			b = append(b, ',')
		}
		// ResourceDescriptor, fields in schema order.
		b = append(b, `{"name":`...)
		b = appendString(b, p.Name)
		b = append(b, `,"digest":{"sha256":`...)
		b = appendString(b, p.SHA256)
		b = append(b, "}}"...)
	}
	b = append(b, `],"predicateType":`...)
	b = appendString(b, PredicateType)

	// The predicate is a Struct: keys sorted at every level.
	b = append(b, `,"predicate":{"buildDefinition":{"buildType":`...)
	b = appendString(b, BuildType)
	b = append(b, `,"externalParameters":{"caller_claims":{`...)
	keys := make([]string, 0, len(s.CallerClaims))
	for k := range s.CallerClaims {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for i, k := range keys {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendString(b, k)
		b = append(b, ':')
		b = appendString(b, s.CallerClaims[k])
	}
	b = append(b, `},"command":`...)
	b = appendStrings(b, s.Command)
	b = append(b, `,"step":`...)
	b = appendString(b, s.Name)
	b = append(b, `},"internalParameters":{"caller_cmdline":`...)
	b = appendStrings(b, s.CallerCmdline)
	b = append(b, `,"workload":{"gid":`...)
	b = strconv.AppendUint(b, uint64(s.Workload.GID), 10)
	b = append(b, `,"pid":`...)
	b = strconv.AppendInt(b, int64(s.Workload.PID), 10)
	b = append(b, `,"selectors":`...)
	b = appendStrings(b, s.Workload.Selectors)
	b = append(b, `,"spiffe_ids":`...)
	b = appendStrings(b, s.Workload.SPIFFEIDs)
	b = append(b, `,"uid":`...)
	b = strconv.AppendUint(b, uint64(s.Workload.UID), 10)
	b = append(b, `},"workspace":`...)
	b = appendString(b, s.Workspace)
	b = append(b, '}')
	if len(materials)+len(sources) > 0 {
		b = append(b, `,"resolvedDependencies":[`...)
		for i, m := range materials {
			if i > 0 {
				b = append(b, ',')
			}
			b = append(b, `{"digest":{"sha256":`...)
			b = appendString(b, m.SHA256)
			b = append(b, `},"name":`...)
			b = appendString(b, m.Name)
			b = append(b, '}')
		}
		for i, g := range sources {
			if i > 0 || len(materials) > 0 {
				b = append(b, ',')
			}
			b = append(b, `{"annotations":{"clean":`...)
			b = strconv.AppendBool(b, g.Clean)
			b = append(b, `,"ref":`...)
			b = appendString(b, g.Ref)
			b = append(b, `,"remote_url":`...)
			b = appendString(b, g.RemoteURL)
			b = append(b, `,"tree":`...)
			b = appendString(b, g.Tree)
			b = append(b, `},"digest":{"gitCommit":`...)
			b = appendString(b, g.Commit)
			b = append(b, `},"name":`...)
			b = appendString(b, g.Path)
			if uri := g.URI(); uri != "" {
				b = append(b, `,"uri":`...)
				b = appendString(b, uri)
			}
			b = append(b, '}')
		}
		b = append(b, ']')
	}
	b = append(b, `},"runDetails":{"builder":{"id":`...)
	b = appendString(b, s.BuilderID)
	b = append(b, '}')
	if s.InvocationID != "" || !s.StartedOn.IsZero() || !s.FinishedOn.IsZero() {
		b = append(b, `,"metadata":{`...)
		sep := false
		field := func(key string) {
			if sep {
				b = append(b, ',')
			}
			sep = true
			b = append(b, key...)
		}
		if !s.FinishedOn.IsZero() {
			field(`"finishedOn":"`)
			b = appendTimestamp(b, s.FinishedOn)
			b = append(b, '"')
		}
		if s.InvocationID != "" {
			field(`"invocationId":`)
			b = appendString(b, s.InvocationID)
		}
		if !s.StartedOn.IsZero() {
			field(`"startedOn":"`)
			b = appendTimestamp(b, s.StartedOn)
			b = append(b, '"')
		}
		b = append(b, '}')
	}
	b = append(b, "}}}"...)

	// checkStep and sortedArtifacts accepted only valid UTF-8, so this
	// cannot fail; it keeps the encoder honest should that ever change.
	if !utf8.Valid(b) {
		return nil, errInvalidUTF8
	}
	return b, nil
}

// statementSizeHint is about the statement's length, to allocate once.
func statementSizeHint(s Step, artifacts int) int {
	n := 640 + artifacts*96 + len(s.Name) + len(s.Workspace) + len(s.BuilderID) + len(s.InvocationID)
	for _, ss := range [][]string{s.Command, s.CallerCmdline, s.Workload.SPIFFEIDs, s.Workload.Selectors} {
		for _, v := range ss {
			n += len(v) + 3
		}
	}
	for k, v := range s.CallerClaims {
		n += len(k) + len(v) + 6
	}
	for _, g := range s.Sources {
		n += 256 + 2*len(g.RemoteURL) + len(g.Ref) + len(g.Path)
	}
	return n
}

// Protojson of the bundle's timestamp, between its certificate and its
// envelope (fields in declaration order).
const (
	timestampHead = `,"timestampVerificationData":{"rfc3161Timestamps":[{"signedTimestamp":"`
	timestampTail = `"}]}`
)

// bundleJSONSize is the length of bundleJSON's output for a payload, a
// signature, a certificate and a timestamp (-1: none) of these lengths.
func bundleJSONSize(payload, sig, certDER, timestamp int) int {
	enc := base64.StdEncoding
	n := len(`{"mediaType":"`+BundleMediaType+`","verificationMaterial":{"certificate":{"rawBytes":"`) +
		enc.EncodedLen(certDER) +
		len(`"}},"dsseEnvelope":{"payload":"`) + enc.EncodedLen(payload) +
		len(`","payloadType":"`+PayloadType+`","signatures":[{"sig":"`) + enc.EncodedLen(sig) + len(`"}]}}`)
	if timestamp >= 0 {
		n += len(timestampHead) + enc.EncodedLen(timestamp) + len(timestampTail)
	}
	return n
}

// bundleJSON returns what MarshalBundle returns for a bundle of leaf
// (certDER), an envelope of payload with the one signature sig, and, when
// timestamp is not nil, that RFC 3161 timestamp (NewBundle, then the
// timestamp set as its timestampVerificationData).
func bundleJSON(payload, sig, certDER, timestamp []byte) []byte {
	enc := base64.StdEncoding
	tsLen := -1
	if timestamp != nil {
		tsLen = len(timestamp)
	}
	b := make([]byte, 0, bundleJSONSize(len(payload), len(sig), len(certDER), tsLen))
	b = append(b, `{"mediaType":`...)
	b = appendString(b, BundleMediaType)
	b = append(b, `,"verificationMaterial":{"certificate":{"rawBytes":"`...)
	b = enc.AppendEncode(b, certDER)
	b = append(b, `"}`...)
	if timestamp != nil {
		b = append(b, timestampHead...)
		b = enc.AppendEncode(b, timestamp)
		b = append(b, timestampTail...)
	}
	b = append(b, `},"dsseEnvelope":{"payload":"`...)
	b = enc.AppendEncode(b, payload)
	b = append(b, `","payloadType":`...)
	b = appendString(b, PayloadType)
	b = append(b, `,"signatures":[{"sig":"`...)
	b = enc.AppendEncode(b, sig)
	b = append(b, `"}]}}`...)
	return b
}

// validTimestamp reports whether t is zero (omitted) or fits a
// google.protobuf.Timestamp.
func validTimestamp(t time.Time) bool {
	if t.IsZero() {
		return true
	}
	secs := t.Unix()
	return secs >= minTimestampSeconds && secs <= maxTimestampSeconds
}

// appendTimestamp appends t as protojson writes a Timestamp (without the
// quotes): RFC 3339 in UTC with 0, 3, 6 or 9 fractional digits.
func appendTimestamp(b []byte, t time.Time) []byte {
	t = t.UTC()
	b = t.AppendFormat(b, "2006-01-02T15:04:05")
	ns := t.Nanosecond()
	digits := 9
	switch {
	case ns == 0:
		digits = 0
	case ns%1e6 == 0:
		ns, digits = ns/1e6, 3
	case ns%1e3 == 0:
		ns, digits = ns/1e3, 6
	}
	if digits > 0 {
		b = append(b, '.')
		var frac [9]byte
		for i := digits - 1; i >= 0; i-- {
			frac[i] = byte('0' + ns%10)
			ns /= 10
		}
		b = append(b, frac[:digits]...)
	}
	return append(b, 'Z')
}

func appendStrings(b []byte, ss []string) []byte {
	b = append(b, '[')
	for i, s := range ss {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendString(b, s)
	}
	return append(b, ']')
}

// shortEscapes pairs each character that protojson escapes with a letter
// with that letter (\" \\ \b \f \n \r \t); it escapes the other control
// characters as \u00XX in lowerHex. appendString writes these escapes and
// StepOfStatement reads them.
const (
	shortEscapes = "\"\"\\\\\bb\ff\nn\rr\tt"
	lowerHex     = "0123456789abcdef"
)

// escapeLetter is the letter c is escaped with, or 0 if it has none.
func escapeLetter(c byte) byte {
	for i := 0; i < len(shortEscapes); i += 2 {
		if shortEscapes[i] == c {
			return shortEscapes[i+1]
		}
	}
	return 0
}

// unescapeLetter is the character escaped with letter l, if any.
func unescapeLetter(l byte) (byte, bool) {
	for i := 1; i < len(shortEscapes); i += 2 {
		if shortEscapes[i] == l {
			return shortEscapes[i-1], true
		}
	}
	return 0, false
}

// appendString appends s as a JSON string escaped as protojson escapes it:
// '"', '\\' and control characters only, the latter as \b, \f, \n, \r, \t
// or \u00XX; everything else as is. Invalid UTF-8 is copied through, and
// statementJSON refuses the result.
func appendString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= ' ' && c != '"' && c != '\\' {
			continue
		}
		b = append(b, s[start:i]...)
		if l := escapeLetter(c); l != 0 {
			b = append(b, '\\', l)
		} else {
			b = append(b, '\\', 'u', '0', '0', lowerHex[c>>4], lowerHex[c&0xf])
		}
		start = i + 1
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
