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
	type open struct {
		typ     hclsyntax.TokenType
		entries int // commas, in a list
	}
	var (
		stack []open
		prev  hclsyntax.TokenType // the last token other than a comment or newline
	)
	for _, tok := range tokens {
		if !policyTokens[tok.Type] {
			return shapeError(filename, tok.Range.Start, fmt.Sprintf("%q is not allowed: a policy's values are literal strings, numbers, booleans and lists of them", truncate(string(tok.Bytes), 16)))
		}
		switch tok.Type {
		case hclsyntax.TokenOBrack:
			// A list is a value: it follows "=", "[" or ",". After
			// anything else it would index one.
			if prev != hclsyntax.TokenEqual && prev != hclsyntax.TokenOBrack && prev != hclsyntax.TokenComma {
				return shapeError(filename, tok.Range.Start, "an index is not allowed: a list follows \"=\", \"[\" or \",\"")
			}
			fallthrough
		case hclsyntax.TokenOBrace:
			if stack = append(stack, open{typ: tok.Type}); len(stack) > maxPolicyDepth {
				return shapeError(filename, tok.Range.Start, fmt.Sprintf("nested more than %d deep", maxPolicyDepth))
			}
		case hclsyntax.TokenCBrace, hclsyntax.TokenCBrack:
			if len(stack) > 0 {
				stack = stack[:len(stack)-1]
			}
		case hclsyntax.TokenComma:
			if top := len(stack) - 1; top >= 0 && stack[top].typ == hclsyntax.TokenOBrack {
				if stack[top].entries++; stack[top].entries > maxListLen {
					return shapeError(filename, tok.Range.Start, fmt.Sprintf("a list of more than %d entries", maxListLen))
				}
			}
		}
		if tok.Type != hclsyntax.TokenComment && tok.Type != hclsyntax.TokenNewline {
			prev = tok.Type
		}
	}
	return nil
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
	type open struct {
		c       byte
		entries int
	}
	var stack []open
	inString, escaped := false, false
	for i, c := range src {
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
			if stack = append(stack, open{c: c}); len(stack) > maxPolicyDepth {
				return shapeError(filename, offsetPos(src, i), fmt.Sprintf("nested more than %d deep", maxPolicyDepth))
			}
		case c == ']' || c == '}':
			if len(stack) > 0 {
				stack = stack[:len(stack)-1]
			}
		case c == ',':
			if top := len(stack) - 1; top >= 0 && stack[top].c == '[' {
				if stack[top].entries++; stack[top].entries > maxListLen {
					return shapeError(filename, offsetPos(src, i), fmt.Sprintf("a list of more than %d entries", maxListLen))
				}
			}
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
