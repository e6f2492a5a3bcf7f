package config

import (
	"bytes"
	"encoding/json"
	"strings"
)

// readSimple reads the common shape of a configuration file without a YAML
// parser: top-level keys of the configuration (each once) with plain scalar
// values, and nonMasqueradeCIDRs and masqueradeCIDRs as block lists of CIDRs, one per line:
//
//	cidrLimit: 10000
//	nonMasqueradeCIDRs:
//	  - 10.0.0.0/8       # a comment
//	  - 'fd00::/8'
//	resyncInterval: 60s
//
// A YAML parser takes about 5 µs per list entry (a 10,000-CIDR file: 50 ms
// or more); this takes well under 1 µs. It returns ok false for anything
// outside that shape, and the caller then parses the document as YAML, so it
// only ever answers for a document that YAML reads the same way: every value
// it accepts is one that YAML resolves to the same string, number, boolean
// or null (a list item must hold a '/', which no YAML number, boolean, null
// or timestamp does; a bare number in a list, an unknown or repeated key, a
// multi-line scalar, a tab, a flow list with items, anchors, tags and
// directives all go to YAML).
func readSimple(data []byte) (fields []field, ok bool) {
	for _, c := range data {
		if (c < ' ' || c > '~') && c != '\n' {
			return nil, false // tabs, CR, control and non-ASCII bytes: YAML's business
		}
	}
	list := -1       // index in fields of the open block list; -1: none
	listIndent := -1 // indentation of its items; -1: none yet
	for len(data) > 0 {
		var line []byte
		line, data, _ = bytes.Cut(data, []byte{'\n'})
		rest := bytes.TrimLeft(line, " ")
		indent := len(line) - len(rest)
		switch {
		case len(rest) == 0 || rest[0] == '#':
			// Blank or comment line.

		case rest[0] == '-' && (len(rest) == 1 || rest[1] == ' '):
			// An item of the open list, at the indentation of the first.
			if list < 0 || (listIndent >= 0 && indent != listIndent) {
				return nil, false
			}
			listIndent = indent
			item, ok := simpleItem(bytes.TrimLeft(rest[1:], " "))
			if !ok {
				return nil, false
			}
			fields[list].list = append(fields[list].list, item)

		case indent == 0:
			key, value, ok := simpleKey(line)
			if !ok {
				return nil, false
			}
			for _, f := range fields {
				if strings.EqualFold(f.key, key) {
					return nil, false // repeated: YAML's rules decide
				}
			}
			f := field{key: key}
			list, listIndent = -1, -1
			switch {
			case strings.EqualFold(key, keyNonMasqueradeCIDRs), strings.EqualFold(key, keyMasqueradeCIDRs):
				f.isList = true
				switch value {
				case "":
					list = len(fields) // items may follow; none is null
				case "[]", "null", "~":
					// Empty, as null is: no items may follow.
				default:
					return nil, false
				}
			case isNull(value):
				f.value = json.RawMessage("null")
			case strings.EqualFold(key, keyCIDRLimit) && isSimpleInt(value),
				(strings.EqualFold(key, keyMasqLinkLocal) || strings.EqualFold(key, keyMasqLinkLocalIPv6)) &&
					(value == "true" || value == "false"):
				f.value = json.RawMessage(value)
			case strings.EqualFold(key, keyResyncInterval) && isSimpleDuration(value):
				f.value = json.RawMessage(`"` + value + `"`)
			default:
				return nil, false
			}
			fields = append(fields, f)

		default:
			// Indented, and not a list item: a nested mapping or a
			// continued scalar.
			return nil, false
		}
	}
	return fields, true
}

// simpleKey splits a top-level line "key: value  # comment" into a key of
// the configuration and its value, without the comment.
func simpleKey(line []byte) (key, value string, ok bool) {
	k, v, found := bytes.Cut(line, []byte{':'})
	if !found || len(k) == 0 || (len(v) > 0 && v[0] != ' ') {
		return "", "", false
	}
	for _, c := range k {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9') {
			return "", "", false
		}
	}
	key = string(k)
	switch {
	case strings.EqualFold(key, keyNonMasqueradeCIDRs), strings.EqualFold(key, keyMasqueradeCIDRs), strings.EqualFold(key, keyCIDRLimit),
		strings.EqualFold(key, keyMasqLinkLocal), strings.EqualFold(key, keyMasqLinkLocalIPv6),
		strings.EqualFold(key, keyResyncInterval):
	default:
		return "", "", false // unknown keys are reported in YAML's order
	}
	return key, string(withoutComment(v)), true
}

// withoutComment trims the spaces around a value and the comment after it
// (a '#' after a space). It is used only on values that hold no quotes.
func withoutComment(v []byte) []byte {
	v = bytes.TrimLeft(v, " ")
	if len(v) > 0 && v[0] == '#' {
		return nil
	}
	if i := bytes.Index(v, []byte(" #")); i >= 0 {
		v = v[:i]
	}
	return bytes.TrimRight(v, " ")
}

// simpleItem reads one list item (after "- "): a plain CIDR-like scalar, or
// a quoted string without escapes, with an optional comment after it.
func simpleItem(v []byte) (string, bool) {
	if len(v) == 0 {
		return "", false
	}
	if q := v[0]; q == '\'' || q == '"' {
		end := bytes.IndexByte(v[1:], q)
		if end < 0 {
			return "", false
		}
		s := v[1 : 1+end]
		if q == '"' && bytes.IndexByte(s, '\\') >= 0 {
			return "", false
		}
		if len(withoutComment(v[2+end:])) > 0 {
			return "", false // more after the closing quote (or '' inside)
		}
		return string(s), true
	}
	end := bytes.IndexByte(v, ' ')
	if end < 0 {
		end = len(v)
	}
	s := v[:end]
	if len(withoutComment(v[end:])) > 0 || !isHex(s[0]) || s[len(s)-1] == ':' || bytes.IndexByte(s, '/') < 0 {
		return "", false
	}
	for _, c := range s {
		if !isHex(c) && c != '.' && c != ':' && c != '/' {
			return "", false
		}
	}
	return string(s), true
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

// isNull reports the spellings of null that readSimple takes: nothing, "null"
// and "~" (YAML has others; they go to YAML).
func isNull(v string) bool { return v == "" || v == "null" || v == "~" }

// isSimpleInt reports a decimal integer that YAML and JSON read alike: no
// sign but '-', no leading zero (YAML 1.1 reads 010 as octal), no '_', and
// short enough for an int on any platform.
func isSimpleInt(v string) bool {
	digits := strings.TrimPrefix(v, "-")
	if len(digits) == 0 || len(digits) > 9 || (digits[0] == '0' && len(digits) > 1) || v == "-0" {
		return false
	}
	for _, c := range []byte(digits) {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// isSimpleDuration reports a plain scalar that looks like a Go duration
// ("60s", "1m30s", "1.5h"): a digit first, a unit letter last, nothing but
// digits, '.' and the letters of units in between. YAML reads every such
// scalar as a string. Whether it is a valid duration is decided later.
func isSimpleDuration(v string) bool {
	if len(v) == 0 || v[0] < '0' || v[0] > '9' {
		return false
	}
	if last := v[len(v)-1]; last < 'a' || last > 'z' {
		return false
	}
	for _, c := range []byte(v) {
		if !('0' <= c && c <= '9' || c == '.' || strings.IndexByte("nsumh", c) >= 0) {
			return false
		}
	}
	return true
}
