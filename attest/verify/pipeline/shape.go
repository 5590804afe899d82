package pipeline

import (
	"bytes"
	"fmt"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
)

// maxPolicyDepth bounds how deeply a policy file nests brackets and
// braces. A policy needs about four.
const maxPolicyDepth = 32

// policyTokens are the HCL native syntax tokens a policy is made of:
// attributes and blocks whose values are literal strings, numbers,
// booleans and lists of them. Everything else HCL reads (operators,
// conditionals, function calls, indexes, for expressions, splats,
// templates, heredocs) is refused before HCL parses the file: its parser
// and its evaluator recurse once per operator or nesting level without a
// bound of their own, and a Go stack overflow is fatal, not an error
// (240 KB of unary minus signs, `1+1+...`, nested brackets, each took
// hallmark verify down, and would take down any program calling
// ParsePolicy or IsPolicy); and some are slow to read (an index chain
// is quadratic: 300,000 levels took 314 s of CPU; unclosed template ifs,
// 100 s).
var policyTokens = map[hclsyntax.TokenType]bool{
	hclsyntax.TokenIdent: true, hclsyntax.TokenEqual: true, hclsyntax.TokenNumberLit: true,
	hclsyntax.TokenOQuote: true, hclsyntax.TokenQuotedLit: true, hclsyntax.TokenCQuote: true,
	hclsyntax.TokenOBrack: true, hclsyntax.TokenCBrack: true, hclsyntax.TokenOBrace: true, hclsyntax.TokenCBrace: true,
	hclsyntax.TokenComma: true, hclsyntax.TokenNewline: true, hclsyntax.TokenComment: true, hclsyntax.TokenEOF: true,
}

// checkShape refuses, before HCL parses it, a policy file that uses more
// of HCL than a policy needs (policyTokens), indexes a value, nests
// deeper than maxPolicyDepth or has a list of more than maxListLen
// entries (decoding a list costs go-cty time quadratic in its length:
// 18 s for 50,000 strings). It reads HCL native syntax with HCL's own
// lexer (an iterative scanner), and HCL's JSON syntax as JSON. Errors
// name the position.
func checkShape(filename string, src []byte, json bool) error {
	if json {
		return checkJSONShape(filename, src)
	}
	tokens, _ := hclsyntax.LexConfig(src, filename, hcl.InitialPos) // the parser reports lexing errors
	var (
		open nesting
		prev hclsyntax.TokenType // the last token other than a comment or newline
	)
	for _, tok := range tokens {
		problem := ""
		switch {
		case !policyTokens[tok.Type]:
			problem = fmt.Sprintf("%q is not allowed: a policy's values are literal strings, numbers, booleans and lists of them", truncate(string(tok.Bytes), 16))
		case tok.Type == hclsyntax.TokenOBrack:
			// A list is a value: it follows "=", "[" or ",". After
			// anything else it would index one.
			if prev != hclsyntax.TokenEqual && prev != hclsyntax.TokenOBrack && prev != hclsyntax.TokenComma {
				problem = "an index is not allowed: a list follows \"=\", \"[\" or \",\""
			} else {
				problem = open.push(true)
			}
		case tok.Type == hclsyntax.TokenOBrace:
			problem = open.push(false)
		case tok.Type == hclsyntax.TokenCBrace, tok.Type == hclsyntax.TokenCBrack:
			open.pop()
		case tok.Type == hclsyntax.TokenComma:
			problem = open.comma()
		}
		if problem != "" {
			return shapeError(filename, tok.Range.Start, problem)
		}
		if tok.Type != hclsyntax.TokenComment && tok.Type != hclsyntax.TokenNewline {
			prev = tok.Type
		}
	}
	return nil
}

// nesting follows the open brackets and braces of a policy file, and the
// entries of each open list, for both syntaxes' checks. Its methods
// return what is wrong, or "".
type nesting []level

// level is one open bracket (a list) or brace.
type level struct {
	list   bool
	commas int
}

func (n *nesting) push(list bool) string {
	if *n = append(*n, level{list: list}); len(*n) > maxPolicyDepth {
		return fmt.Sprintf("nested more than %d deep", maxPolicyDepth)
	}
	return ""
}

func (n *nesting) pop() {
	if len(*n) > 0 {
		*n = (*n)[:len(*n)-1]
	}
}

func (n *nesting) comma() string {
	if top := len(*n) - 1; top >= 0 && (*n)[top].list {
		if (*n)[top].commas++; (*n)[top].commas > maxListLen {
			return fmt.Sprintf("a list of more than %d entries", maxListLen)
		}
	}
	return ""
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// checkJSONShape is checkShape for HCL's JSON syntax. Strings are skipped
// whole: ParsePolicy decodes without an evaluation context, so HCL reads
// no template in them.
func checkJSONShape(filename string, src []byte) error {
	var open nesting
	inString, escaped := false, false
	for i, c := range src {
		problem := ""
		switch {
		case inString:
			switch {
			case escaped:
				escaped = false
			case c == '\\':
				escaped = true
			case c == '"':
				inString = false
			}
		case c == '"':
			inString = true
		case c == '[' || c == '{':
			problem = open.push(c == '[')
		case c == ']' || c == '}':
			open.pop()
		case c == ',':
			problem = open.comma()
		}
		if problem != "" {
			return shapeError(filename, offsetPos(src, i), problem)
		}
	}
	return nil
}

func shapeError(filename string, at hcl.Pos, what string) error {
	return fmt.Errorf("pipeline: policy %s:%d,%d: %s", filename, at.Line, at.Column, what)
}

// offsetPos is the line and column (in bytes, from 1) of src[i].
func offsetPos(src []byte, i int) hcl.Pos {
	line := bytes.Count(src[:i], []byte("\n")) + 1
	col := i - (bytes.LastIndexByte(src[:i], '\n') + 1) + 1
	return hcl.Pos{Line: line, Column: col, Byte: i}
}
