package attest

import (
	"bytes"
	"strconv"
	"strings"
	"time"
)

// This file reads back what statementJSON writes, so that verifiers can
// take the statements the agent signs without protojson's costly
// google.protobuf.Struct decoding, and leave every other statement to it.

// StepOfStatement returns a Step whose statement is exactly payload:
// statementJSON(s) equals payload byte for byte. It says no (false) for
// anything else (statements of step/v1, other writers' whitespace or key
// order, escapes protojson would not write, numbers in another spelling,
// unknown or duplicate keys), and the caller then uses the general parser.
//
// Why a yes is as good as protojson's answer: statementJSON(s) is, by
// construction and by TestStatementJSONMatchesProtojson and
// FuzzStatementJSON, the bytes MarshalStatement(NewStatement(s)), and
// NewStatement(s) passes in-toto's Validate. protojson reads its own
// output back to an equal message, so protojson.Unmarshal(payload) is
// NewStatement(s): the subjects are s.Products in order, the predicate's
// step is s.Name, its builder id s.BuilderID, its workload s.Workload.
//
// The reader follows statementJSON's layout literally: it expects each
// constant piece of the encoding in turn and reads only strings (with
// just the escapes appendString writes, from the same table), integers and
// booleans in between, failing at the first byte statementJSON would not
// have written there. Its strictness only saves work: the re-encoding and
// the byte comparison at the end are what make a yes trustworthy. How the
// bytes were read therefore does not matter; a misread Step re-encodes to
// different bytes and is refused. FuzzStepOfStatementReadBack tests the
// round trip, and attest/verify's FuzzStatementFastAgrees and
// FuzzStatementFastAgent test the reader against protojson.
func StepOfStatement(payload []byte) (Step, bool) {
	d := scanner{b: payload, ok: true}
	var s Step
	d.lit(`{"_type":"https://in-toto.io/Statement/v1","subject":[`)
	for d.ok && !d.peek("]") {
		var a Artifact
		d.lit(`{"name":`)
		a.Name = d.str()
		d.lit(`,"digest":{"sha256":`)
		a.SHA256 = d.str()
		d.lit(`}}`)
		s.Products = append(s.Products, a)
		d.peek(",")
	}
	d.lit(`,"predicateType":`)
	d.str() // statementJSON writes PredicateType; the comparison checks
	d.lit(`,"predicate":{"buildDefinition":{"buildType":`)
	d.str() // BuildType, likewise
	d.lit(`,"externalParameters":{"caller_claims":{`)
	for d.ok && !d.peek("}") {
		if s.CallerClaims == nil {
			s.CallerClaims = map[string]string{}
		}
		k := d.str()
		d.lit(":")
		s.CallerClaims[k] = d.str()
		d.peek(",")
	}
	d.lit(`,"command":`)
	s.Command = d.strs()
	d.lit(`,"step":`)
	s.Name = d.str()
	d.lit(`},"internalParameters":{"caller_cmdline":`)
	s.CallerCmdline = d.strs()
	d.lit(`,"workload":{"gid":`)
	s.Workload.GID = uint32(d.int(0, 1<<32-1))
	d.lit(`,"pid":`)
	s.Workload.PID = int32(d.int(-1<<31, 1<<31-1))
	d.lit(`,"selectors":`)
	s.Workload.Selectors = d.strs()
	d.lit(`,"spiffe_ids":`)
	s.Workload.SPIFFEIDs = d.strs()
	d.lit(`,"uid":`)
	s.Workload.UID = uint32(d.int(0, 1<<32-1))
	d.lit(`},"workspace":`)
	s.Workspace = d.str()
	d.lit(`}`)
	if d.peek(`,"resolvedDependencies":[`) {
		for d.ok && !d.peek("]") {
			switch {
			case d.peek(`{"digest":{"sha256":`):
				var a Artifact
				a.SHA256 = d.str()
				d.lit(`},"name":`)
				a.Name = d.str()
				s.Materials = append(s.Materials, a)
			case d.peek(`{"annotations":{"clean":`):
				var g GitSource
				g.Clean = d.peek("true")
				if !g.Clean {
					d.lit("false")
				}
				d.lit(`,"ref":`)
				g.Ref = d.str()
				d.lit(`,"remote_url":`)
				g.RemoteURL = d.str()
				d.lit(`,"tree":`)
				g.Tree = d.str()
				d.lit(`},"digest":{"gitCommit":`)
				g.Commit = d.str()
				d.lit(`},"name":`)
				g.Path = d.str()
				if d.peek(`,"uri":`) {
					d.str() // g.URI(); the comparison checks
				}
				s.Sources = append(s.Sources, g)
			default:
				d.ok = false
			}
			d.lit("}")
			d.peek(",")
		}
	}
	d.lit(`},"runDetails":{"builder":{"id":`)
	s.BuilderID = d.str()
	d.lit("}")
	if d.peek(`,"metadata":{`) {
		for d.ok && !d.peek("}") {
			switch {
			case d.peek(`"finishedOn":`):
				s.FinishedOn = d.timestamp()
			case d.peek(`"invocationId":`):
				s.InvocationID = d.str()
			case d.peek(`"startedOn":`):
				s.StartedOn = d.timestamp()
			default:
				d.ok = false
			}
			d.peek(",")
		}
	}
	d.lit("}}}")
	if !d.ok || len(d.b) != 0 {
		return Step{}, false
	}
	again, err := statementJSON(s)
	if err != nil || !bytes.Equal(again, payload) {
		return Step{}, false
	}
	return s, true
}

// scanner reads b from the front; ok turns false at the first thing it
// does not expect and stays false (every method is then a no-op).
type scanner struct {
	b  []byte
	ok bool
}

// lit consumes s or fails.
func (d *scanner) lit(s string) {
	if !d.peek(s) {
		d.ok = false
	}
}

// peek consumes s if b starts with it.
func (d *scanner) peek(s string) bool {
	if !d.ok || len(d.b) < len(s) || string(d.b[:len(s)]) != s {
		return false
	}
	d.b = d.b[len(s):]
	return true
}

// str reads a JSON string with the escapes appendString writes.
func (d *scanner) str() string {
	d.lit(`"`)
	if !d.ok {
		return ""
	}
	for i := 0; i < len(d.b); i++ {
		switch d.b[i] {
		case '"':
			s := string(d.b[:i])
			d.b = d.b[i+1:]
			return s
		case '\\':
			return d.escaped(i)
		}
		if d.b[i] < ' ' { // appendString escapes these
			d.ok = false
			return ""
		}
	}
	d.ok = false
	return ""
}

// escaped reads the rest of a string whose first escape is at b[i].
func (d *scanner) escaped(i int) string {
	out := append([]byte(nil), d.b[:i]...)
	for i < len(d.b) {
		c := d.b[i]
		switch {
		case c == '"':
			d.b = d.b[i+1:]
			return string(out)
		case c < ' ':
			d.ok = false
			return ""
		case c != '\\':
			out = append(out, c)
			i++
			continue
		case i+1 >= len(d.b):
			d.ok = false
			return ""
		}
		e := d.b[i+1]
		if c, ok := unescapeLetter(e); ok {
			out = append(out, c)
		} else {
			// Only \u00XX, in lowerHex, for a control character.
			h := d.b[i+2:]
			if e != 'u' || len(h) < 4 || h[0] != '0' || h[1] != '0' {
				d.ok = false
				return ""
			}
			hi, lo := strings.IndexByte("01", h[2]), strings.IndexByte(lowerHex, h[3])
			if hi < 0 || lo < 0 {
				d.ok = false
				return ""
			}
			out = append(out, byte(hi<<4|lo))
			i += 4
		}
		i += 2
	}
	d.ok = false
	return ""
}

// strs reads an array of strings.
func (d *scanner) strs() []string {
	d.lit("[")
	var out []string
	for d.ok && !d.peek("]") {
		out = append(out, d.str())
		d.peek(",")
	}
	return out
}

// int reads a decimal integer in [lo, hi].
func (d *scanner) int(lo, hi int64) int64 {
	if !d.ok {
		return 0
	}
	n := 0
	if n < len(d.b) && d.b[n] == '-' {
		n++
	}
	for n < len(d.b) && d.b[n] >= '0' && d.b[n] <= '9' {
		n++
	}
	v, err := strconv.ParseInt(string(d.b[:n]), 10, 64)
	if err != nil || v < lo || v > hi {
		d.ok = false
		return 0
	}
	d.b = d.b[n:]
	return v
}

// timestamp reads a quoted RFC 3339 time.
func (d *scanner) timestamp() time.Time {
	v := d.str()
	if !d.ok {
		return time.Time{}
	}
	t, err := time.Parse(time.RFC3339Nano, v)
	if err != nil {
		d.ok = false
	}
	return t
}
