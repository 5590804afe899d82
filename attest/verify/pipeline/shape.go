package pipeline

import (
	"bytes"
	"fmt"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
)

// maxPolicyDepth bounds how deeply a policy file nests brackets, braces,
// parentheses, strings and template sequences. A policy needs about five;
// HCL's parsers recurse once per level without a bound of their own, and
// a Go stack overflow is fatal, not an error: a 200 KB file of nested
// brackets took hallmark verify down (and would take down any program
// calling ParsePolicy or IsPolicy).
const maxPolicyDepth = 32

// checkShape refuses, before HCL parses it, a policy file that nests
// deeper than maxPolicyDepth or has a list of more than maxListLen
// entries (decoding a long list costs go-cty time quadratic in its
// length: 18 s for 50,000 strings). It reads HCL native syntax as HCL's
// own lexer does (an iterative scanner; strings, templates and heredocs
// included), and HCL's JSON syntax as JSON. Errors name the position.
func checkShape(filename string, src []byte, json bool) error {
	if json {
		return checkJSONShape(filename, src)
	}
	tokens, _ := hclsyntax.LexConfig(src, filename, hcl.InitialPos) // the parser reports lexing errors
	type open struct {
		typ     hclsyntax.TokenType
		entries int // commas, in a list
	}
	var stack []open
	for _, tok := range tokens {
		switch tok.Type {
		case hclsyntax.TokenOBrace, hclsyntax.TokenOBrack, hclsyntax.TokenOParen,
			hclsyntax.TokenTemplateInterp, hclsyntax.TokenTemplateControl,
			hclsyntax.TokenOQuote, hclsyntax.TokenOHeredoc:
			if stack = append(stack, open{typ: tok.Type}); len(stack) > maxPolicyDepth {
				return shapeError(filename, tok.Range.Start, fmt.Sprintf("nested more than %d deep", maxPolicyDepth))
			}
		case hclsyntax.TokenCBrace, hclsyntax.TokenCBrack, hclsyntax.TokenCParen,
			hclsyntax.TokenTemplateSeqEnd, hclsyntax.TokenCQuote, hclsyntax.TokenCHeredoc:
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
	}
	return nil
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
