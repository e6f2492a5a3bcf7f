// Package config holds everything the agent reads from outside: the
// configuration file (with the rules of upstream ip-masq-agent v2.12, so an
// existing ConfigMap keeps working), the command-line flags, and the watch on
// the file's directory. It is pure Go and needs no privileges.
package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"strings"
	"time"
	"unicode"

	"sigs.k8s.io/yaml"
)

// Defaults of the configuration file, as upstream.
const (
	DefaultCIDRLimit      = 64
	DefaultResyncInterval = 60 * time.Second
)

// Keys of the configuration file. They match case-insensitively, as upstream
// (which decodes them with encoding/json).
const (
	keyNonMasqueradeCIDRs = "nonMasqueradeCIDRs"
	keyMasqueradeCIDRs    = "masqueradeCIDRs"
	keyCIDRLimit          = "cidrLimit"
	keyMasqLinkLocal      = "masqLinkLocal"
	keyMasqLinkLocalIPv6  = "masqLinkLocalIPv6"
	keyResyncInterval     = "resyncInterval"
)

// maxCIDRErrors bounds how many bad CIDRs one error lists: a broken list of
// 10,000 entries would otherwise write 10,000 lines to the log on every resync.
const maxCIDRErrors = 20

var (
	linkLocalV4 = netip.MustParsePrefix("169.254.0.0/16")
	linkLocalV6 = netip.MustParsePrefix("fe80::/10")

	// privateRanges is the default non-masquerade list (RFC 1918).
	privateRanges = []string{"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"}

	// reservedRanges is added to the default list by
	// --nomasq-all-reserved-ranges.
	reservedRanges = []string{
		"100.64.0.0/10",   // RFC 6598, carrier-grade NAT
		"192.0.0.0/24",    // RFC 6890, IETF protocol assignments
		"192.0.2.0/24",    // RFC 5737, TEST-NET-1
		"192.88.99.0/24",  // RFC 7526, deprecated 6to4 relay anycast
		"198.18.0.0/15",   // RFC 2544, benchmarking
		"198.51.100.0/24", // RFC 5737, TEST-NET-2
		"203.0.113.0/24",  // RFC 5737, TEST-NET-3
		"240.0.0.0/4",     // RFC 1112, former class E
	}
)

// Options are the flags that change how the file is read.
type Options struct {
	// NoMasqAllReservedRanges selects the 11 reserved ranges as the default
	// list instead of the 3 private ones (--nomasq-all-reserved-ranges).
	NoMasqAllReservedRanges bool
	// EnableIPv6 allows IPv6 CIDRs in the file (--enable-ipv6).
	EnableIPv6 bool
}

// Config is one accepted configuration file.
type Config struct {
	// NonMasqueradeCIDRs is the list as configured: mixed families, in file
	// order, duplicates and overlaps kept. Every prefix is aligned.
	NonMasqueradeCIDRs []netip.Prefix
	// MasqueradeCIDRs are exceptions to NonMasqueradeCIDRs (and to the
	// link-local ranges): destinations that are masqueraded although a
	// shorter non-masquerade prefix covers them. The longest matching prefix
	// of both lists decides (docs/configuration.md). Same form as
	// NonMasqueradeCIDRs; no prefix is in both. Empty by default.
	MasqueradeCIDRs []netip.Prefix
	// CIDRLimit is the most entries NonMasqueradeCIDRs and MasqueradeCIDRs
	// may have together.
	CIDRLimit int
	// MasqLinkLocal false keeps 169.254.0.0/16 out of masquerading.
	MasqLinkLocal bool
	// MasqLinkLocalIPv6 false keeps fe80::/10 out of masquerading.
	MasqLinkLocalIPv6 bool
	// ResyncInterval is the period of the full re-read and re-sync.
	ResyncInterval time.Duration
	// UnknownKeys lists keys of the file that are not configuration keys
	// (in file order for JSON, sorted for YAML). They are ignored, as
	// upstream; the caller may log them at a debug level to help find a
	// misspelt key.
	UnknownKeys []string
}

// Default returns the configuration in force when the file is missing or
// empty.
func Default(o Options) Config {
	list := privateRanges
	if o.NoMasqAllReservedRanges {
		list = append(append([]string(nil), privateRanges...), reservedRanges...)
	}
	cidrs := make([]netip.Prefix, len(list))
	for i, s := range list {
		cidrs[i] = netip.MustParsePrefix(s)
	}
	return Config{
		NonMasqueradeCIDRs: cidrs,
		CIDRLimit:          DefaultCIDRLimit,
		ResyncInterval:     DefaultResyncInterval,
	}
}

// Load reads and parses the file at path. A missing file (or directory, or a
// symlink to nothing) is not an error: it means the defaults, so that deleting
// the ConfigMap reverts to them.
func Load(path string, o Options) (Config, error) {
	c, _, err := LoadData(path, o)
	return c, err
}

// LoadData is Load, and also returns the content it read: nil when the file
// is missing, so a caller can tell later whether the file changed.
func LoadData(path string, o Options) (Config, []byte, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return Default(o), nil, nil
	}
	if err != nil {
		return Config{}, nil, fmt.Errorf("read config %s: %w", path, err)
	}
	c, err := Parse(data, o)
	if err != nil {
		return Config{}, data, fmt.Errorf("config %s: %w", path, err)
	}
	return c, data, nil
}

// Parse parses and validates a YAML or JSON document. Any problem rejects the
// whole document; the error lists every problem found.
func Parse(data []byte, o Options) (Config, error) {
	return parse(data, o, true)
}

// parse is Parse; simple false leaves readSimple out, so a test can compare.
func parse(data []byte, o Options, simple bool) (Config, error) {
	fields, err := topLevelFieldsOf(data, simple)
	if err != nil {
		return Config{}, err
	}

	c := Default(o)
	var errs []error
	var cidrs, masqCIDRs []string
	cidrsSet := false
	// Fields are applied in document order, so when a key appears twice
	// (also in different case) the last one wins, as with encoding/json.
	for _, f := range fields {
		var err error
		switch {
		case strings.EqualFold(f.key, keyNonMasqueradeCIDRs):
			if f.isList {
				cidrs, cidrsSet = f.list, true
				break
			}
			var list []string // null leaves it nil: an empty list
			if err = decodeField(f.value, &list, "a list of CIDR strings"); err == nil {
				cidrs, cidrsSet = list, true
			}
		case strings.EqualFold(f.key, keyMasqueradeCIDRs):
			if f.isList {
				masqCIDRs = f.list
				break
			}
			var list []string // null: no exceptions
			if err = decodeField(f.value, &list, "a list of CIDR strings"); err == nil {
				masqCIDRs = list
			}
		case strings.EqualFold(f.key, keyCIDRLimit):
			err = decodeField(f.value, &c.CIDRLimit, "an integer")
		case strings.EqualFold(f.key, keyMasqLinkLocal):
			err = decodeField(f.value, &c.MasqLinkLocal, "true or false")
		case strings.EqualFold(f.key, keyMasqLinkLocalIPv6):
			err = decodeField(f.value, &c.MasqLinkLocalIPv6, "true or false")
		case strings.EqualFold(f.key, keyResyncInterval):
			err = decodeDuration(f.value, &c.ResyncInterval)
		default:
			c.UnknownKeys = append(c.UnknownKeys, f.key)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", f.key, err))
		}
	}

	configured := len(c.NonMasqueradeCIDRs)
	if cidrsSet {
		var bad []error
		c.NonMasqueradeCIDRs, bad = parseCIDRs(cidrs, o.EnableIPv6)
		errs = append(errs, bad...)
		// Count what was configured, valid or not, so that the limit error
		// does not depend on other errors.
		configured = len(cidrs)
	}
	if len(masqCIDRs) > 0 {
		var bad []error
		c.MasqueradeCIDRs, bad = parseCIDRs(masqCIDRs, o.EnableIPv6)
		errs = append(errs, bad...)
	}
	// Upstream applies the limit to the default list too.
	if err := checkLimit(configured, len(masqCIDRs), c.CIDRLimit); err != nil {
		errs = append(errs, err)
	}
	errs = append(errs, conflicts(c)...)

	if c.ResyncInterval <= 0 {
		// Upstream accepts it and then re-syncs in a tight loop.
		errs = append(errs, fmt.Errorf("%s must be positive, got %s", keyResyncInterval, c.ResyncInterval))
	}

	if err := errors.Join(errs...); err != nil {
		return Config{}, err
	}
	return c, nil
}

// Effective returns the destinations the datapath must not masquerade, split
// by family and without duplicates: the configured CIDRs, plus 169.254.0.0/16
// unless MasqLinkLocal, plus fe80::/10 unless MasqLinkLocalIPv6. IPv6 is empty
// unless enableIPv6. Both slices are non-nil.
func (c Config) Effective(enableIPv6 bool) (v4, v6 []netip.Prefix) {
	v4 = make([]netip.Prefix, 0, len(c.NonMasqueradeCIDRs)+1)
	v6 = make([]netip.Prefix, 0)
	seen := make(map[netip.Prefix]bool, len(c.NonMasqueradeCIDRs)+2)
	add := func(p netip.Prefix) {
		p = p.Masked()
		if seen[p] {
			return
		}
		seen[p] = true
		if p.Addr().Is4() {
			v4 = append(v4, p)
		} else if enableIPv6 {
			v6 = append(v6, p)
		}
	}
	if !c.MasqLinkLocal {
		add(linkLocalV4)
	}
	if enableIPv6 && !c.MasqLinkLocalIPv6 {
		add(linkLocalV6)
	}
	for _, p := range c.NonMasqueradeCIDRs {
		add(p)
	}
	return v4, v6
}

// Exceptions returns the masquerade exceptions (MasqueradeCIDRs) split by
// family and without duplicates; IPv6 is empty unless enableIPv6. Both
// slices are non-nil.
func (c Config) Exceptions(enableIPv6 bool) (v4, v6 []netip.Prefix) {
	v4 = make([]netip.Prefix, 0, len(c.MasqueradeCIDRs))
	v6 = make([]netip.Prefix, 0)
	seen := make(map[netip.Prefix]bool, len(c.MasqueradeCIDRs))
	for _, p := range c.MasqueradeCIDRs {
		p = p.Masked()
		switch {
		case seen[p]:
		case p.Addr().Is4():
			v4 = append(v4, p)
		case enableIPv6:
			v6 = append(v6, p)
		}
		seen[p] = true
	}
	return v4, v6
}

// field is one top-level key of the document with its raw JSON value.
type field struct {
	key   string
	value json.RawMessage
	// isList says that readSimple has decoded the value already: a list of
	// strings in list (nil for null), and value is not set.
	isList bool
	list   []string
}

// topLevelFieldsOf turns the document into its top-level fields in order,
// with readSimple if simple and it can, else as YAML or JSON. An empty,
// comment-only or null document has none.
func topLevelFieldsOf(data []byte, simple bool) ([]field, error) {
	if len(bytes.TrimSpace(data)) == 0 {
		// Also when the blank lines hold tabs, which YAML would reject.
		return nil, nil
	}
	if simple {
		if fields, ok := readSimple(data); ok {
			return fields, nil
		}
	}
	js, err := toJSON(data)
	if err != nil {
		return nil, err
	}
	dec := json.NewDecoder(bytes.NewReader(js))
	tok, err := dec.Token()
	if err != nil {
		return nil, fmt.Errorf("parse config: %w", err)
	}
	if tok == nil {
		return nil, nil // null: all defaults
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return nil, fmt.Errorf("parse config: want a mapping of keys to values, got %s", describeJSON(js))
	}
	var fields []field
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, fmt.Errorf("parse config: %w", err)
		}
		key, _ := tok.(string) // JSON object keys are always strings
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, fmt.Errorf("parse config: %s: %w", key, err)
		}
		fields = append(fields, field{key: key, value: v})
	}
	if _, err := dec.Token(); err != nil { // the closing brace
		return nil, fmt.Errorf("parse config: %w", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("parse config: unexpected data after the top-level mapping")
	}
	return fields, nil
}

// toJSON converts YAML to JSON. A document that is already valid JSON is used
// as it is, as upstream does, so that JSON keeps its key order and numbers.
func toJSON(data []byte) ([]byte, error) {
	trimmed := bytes.TrimLeftFunc(data, unicode.IsSpace)
	if bytes.HasPrefix(trimmed, []byte("{")) && json.Valid(trimmed) {
		return trimmed, nil
	}
	js, err := yaml.YAMLToJSON(data)
	if err != nil {
		return nil, fmt.Errorf("parse config as YAML or JSON: %w", err)
	}
	return js, nil
}

// decodeField decodes one value. A null leaves *dst as it is, which keeps the
// default of a scalar and empties a list, as encoding/json does for upstream.
func decodeField(raw json.RawMessage, dst any, want string) error {
	if err := json.Unmarshal(raw, dst); err != nil {
		return fmt.Errorf("want %s, got %s", want, describeJSON(raw))
	}
	return nil
}

// decodeDuration decodes a Go duration string such as "1m30s". A bare number
// is an error, as upstream: "60" could mean seconds or nanoseconds.
func decodeDuration(raw json.RawMessage, dst *time.Duration) error {
	if string(raw) == "null" {
		return nil // keep the default, like the other scalar keys
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return fmt.Errorf("want a Go duration string such as \"60s\" or \"1m30s\", got %s", describeJSON(raw))
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("want a Go duration string such as \"60s\" or \"1m30s\": %w", err)
	}
	*dst = d
	return nil
}

// describeJSON names a JSON value for an error message, short enough for a log
// line.
func describeJSON(raw []byte) string {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 {
		return "nothing"
	}
	var kind string
	switch raw[0] {
	case '{':
		kind = "a mapping"
	case '[':
		kind = "a list"
	case '"':
		kind = "a string"
	case 't', 'f':
		kind = "a boolean"
	case 'n':
		return "null"
	default:
		kind = "a number"
	}
	const max = 40
	s := string(raw)
	if len(s) > max {
		s = s[:max] + "..."
	}
	return kind + " " + s
}

// parseCIDR parses one entry of nonMasqueradeCIDRs with the grammar of
// net.ParseCIDR, which upstream uses, and checks that it is aligned.
func parseCIDR(s string, enableIPv6 bool) (netip.Prefix, error) {
	// netip.ParsePrefix allocates nothing and, for what it accepts, agrees
	// with net.ParseCIDR, except that it keeps an IPv4-mapped address
	// IPv6. Everything else (errors, "/08", mapped addresses) takes the
	// long way, which words the errors.
	if p, err := netip.ParsePrefix(s); err == nil && !p.Addr().Is4In6() && p.Masked() == p &&
		(p.Addr().Is4() || enableIPv6) {
		return p, nil
	}
	return parseCIDRSlow(s, enableIPv6)
}

// parseCIDRSlow is parseCIDR with net.ParseCIDR.
func parseCIDRSlow(s string, enableIPv6 bool) (netip.Prefix, error) {
	ip, ipnet, err := net.ParseCIDR(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("CIDR %q could not be parsed", s)
	}
	if strings.Contains(s, ":") && ipnet.IP.To4() != nil {
		// net.ParseCIDR turns ::ffff:a.b.c.d/n into an IPv4 network; say so
		// rather than guess which family was meant.
		return netip.Prefix{}, fmt.Errorf("CIDR %q is an IPv4-mapped IPv6 CIDR; write it as the IPv4 CIDR %s", s, ipnet)
	}
	if !ip.Equal(ipnet.IP) {
		return netip.Prefix{}, fmt.Errorf("CIDR %q is not aligned to a CIDR block: its network is %s", s, ipnet)
	}
	addr, ok := netip.AddrFromSlice(ipnet.IP)
	if !ok {
		return netip.Prefix{}, fmt.Errorf("CIDR %q could not be parsed", s)
	}
	ones, _ := ipnet.Mask.Size()
	p := netip.PrefixFrom(addr, ones)
	if p.Addr().Is6() && !enableIPv6 {
		return netip.Prefix{}, fmt.Errorf("CIDR %q is IPv6, but IPv6 is not enabled: enable it with the --enable-ipv6 flag", s)
	}
	return p, nil
}

// checkLimit enforces cidrLimit on both lists together. Link-local ranges
// are not in the lists, so they never count.
func checkLimit(nonMasq, masq, limit int) error {
	if limit < 0 {
		return fmt.Errorf("%s must not be negative, got %d", keyCIDRLimit, limit)
	}
	if masq == 0 && nonMasq > limit {
		return fmt.Errorf("%s has %d CIDRs, more than %s %d (link-local ranges are not counted); raise %s to allow more",
			keyNonMasqueradeCIDRs, nonMasq, keyCIDRLimit, limit, keyCIDRLimit)
	}
	if masq > 0 && nonMasq+masq > limit {
		return fmt.Errorf("%s and %s have %d CIDRs together (%d and %d), more than %s %d (link-local ranges are not counted); raise %s to allow more",
			keyNonMasqueradeCIDRs, keyMasqueradeCIDRs, nonMasq+masq, nonMasq, masq, keyCIDRLimit, limit, keyCIDRLimit)
	}
	return nil
}

// parseCIDRs parses a list of CIDRs; the errors name each bad one, at most
// maxCIDRErrors of them and a count of the rest.
func parseCIDRs(list []string, enableIPv6 bool) ([]netip.Prefix, []error) {
	out := make([]netip.Prefix, 0, len(list))
	var bad []error
	for _, s := range list {
		p, err := parseCIDR(s, enableIPv6)
		if err != nil {
			bad = append(bad, err)
			continue
		}
		out = append(out, p)
	}
	if len(bad) > maxCIDRErrors {
		more := len(bad) - maxCIDRErrors
		bad = append(bad[:maxCIDRErrors], fmt.Errorf("and %d more invalid CIDRs", more))
	}
	return out, bad
}

// conflicts names every prefix that is both a masquerade exception and a
// non-masquerade destination (listed, or link-local by default): the longest
// prefix decides, and for one prefix in both lists nothing would.
func conflicts(c Config) []error {
	if len(c.MasqueradeCIDRs) == 0 {
		return nil
	}
	nonMasq := make(map[netip.Prefix]bool, len(c.NonMasqueradeCIDRs))
	for _, p := range c.NonMasqueradeCIDRs {
		nonMasq[p] = true
	}
	var errs []error
	reported := map[netip.Prefix]bool{}
	for _, p := range c.MasqueradeCIDRs {
		var err error
		switch {
		case reported[p]:
			continue
		case nonMasq[p]:
			err = fmt.Errorf("CIDR %s is in both %s and %s: remove it from one of them", p, keyMasqueradeCIDRs, keyNonMasqueradeCIDRs)
		case p == linkLocalV4 && !c.MasqLinkLocal:
			err = fmt.Errorf("CIDR %s in %s is the link-local range, which is not masqueraded unless %s is true: set %s: true instead",
				p, keyMasqueradeCIDRs, keyMasqLinkLocal, keyMasqLinkLocal)
		case p == linkLocalV6 && !c.MasqLinkLocalIPv6:
			err = fmt.Errorf("CIDR %s in %s is the IPv6 link-local range, which is not masqueraded unless %s is true: set %s: true instead",
				p, keyMasqueradeCIDRs, keyMasqLinkLocalIPv6, keyMasqLinkLocalIPv6)
		default:
			continue
		}
		reported[p] = true
		if len(errs) == maxCIDRErrors {
			errs = append(errs, fmt.Errorf("and more CIDRs in both lists"))
			break
		}
		errs = append(errs, err)
	}
	return errs
}
