package config

import (
	"errors"
	"flag"
	"io"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr/funcr"
	"k8s.io/klog/v2"
)

// newFlags returns a fresh FlagSet that prints nothing.
func newFlags(t *testing.T) (*flag.FlagSet, *Flags) {
	t.Helper()
	fs, f := NewFlagSet("ip-masq-agent")
	fs.SetOutput(io.Discard)
	return fs, f
}

// restoreKlogFlags puts klog's flags back after a test parsed some: they
// write klog's global state, which other tests share.
func restoreKlogFlags(t *testing.T, names ...string) {
	fs, _ := newFlags(t)
	old := map[string]string{}
	for _, n := range names {
		old[n] = fs.Lookup(n).Value.String()
	}
	t.Cleanup(func() {
		for n, v := range old {
			if err := fs.Set(n, v); err != nil {
				t.Errorf("restore --%s=%s: %v", n, v, err)
			}
		}
	})
}

func defaultFlags() Flags {
	return Flags{
		MasqChain:             "IP-MASQ-AGENT",
		RemoveIPTablesChain:   true,
		RandomFully:           true,
		ConfigPath:            "/etc/config/ip-masq-agent",
		PinPath:               "/sys/fs/bpf/ip-masq-agent",
		AttachMode:            "auto",
		NATMaxEntries:         262144,
		MetricsAddress:        ":9441",
		HealthAddress:         "127.0.0.1:9442",
		TCPSynTimeout:         60 * time.Second,
		TCPEstablishedTimeout: 6 * time.Hour,
		TCPFinTimeout:         120 * time.Second,
		TCPRstTimeout:         10 * time.Second,
		UDPTimeout:            60 * time.Second,
		UDPStreamTimeout:      180 * time.Second,
		ICMPTimeout:           30 * time.Second,
		GCInterval:            10 * time.Second,
	}
}

func TestFlagDefaults(t *testing.T) {
	fs, f := newFlags(t)
	if err := fs.Parse(nil); err != nil {
		t.Fatal(err)
	}
	if want := defaultFlags(); *f != want {
		t.Errorf("defaults:\n got %+v\nwant %+v", *f, want)
	}
	if err := f.Validate(); err != nil {
		t.Errorf("defaults do not validate: %v", err)
	}
	// Defaults as shown by --help, with the names upstream and tools use.
	for name, def := range map[string]string{
		"masq-chain":                 "IP-MASQ-AGENT",
		"remove-iptables-chain":      "true",
		"nomasq-all-reserved-ranges": "false",
		"enable-ipv6":                "false",
		"random-fully":               "true",
		"to-ports":                   "",
		"config":                     "/etc/config/ip-masq-agent",
		"interfaces":                 "",
		"pin-path":                   "/sys/fs/bpf/ip-masq-agent",
		"attach-mode":                "auto",
		"nat-max-entries":            "262144",
		"tcp-syn-timeout":            "1m0s",
		"tcp-established-timeout":    "6h0m0s",
		"tcp-fin-timeout":            "2m0s",
		"tcp-rst-timeout":            "10s",
		"udp-timeout":                "1m0s",
		"udp-stream-timeout":         "3m0s",
		"icmp-timeout":               "30s",
		"gc-interval":                "10s",
	} {
		fl := fs.Lookup(name)
		if fl == nil {
			t.Errorf("--%s is not registered", name)
			continue
		}
		if fl.DefValue != def {
			t.Errorf("--%s default = %q, want %q", name, fl.DefValue, def)
		}
		if len(fl.Usage) < 20 {
			t.Errorf("--%s usage %q says too little", name, fl.Usage)
		}
	}
}

func TestFlagsParse(t *testing.T) {
	for _, tc := range []struct {
		name  string
		value string // "" for a bool flag set to true by its name alone
		check func(f *Flags) bool
	}{
		{"masq-chain", "OLD-CHAIN", func(f *Flags) bool { return f.MasqChain == "OLD-CHAIN" }},
		{"remove-iptables-chain", "false", func(f *Flags) bool { return !f.RemoveIPTablesChain }},
		{"nomasq-all-reserved-ranges", "", func(f *Flags) bool { return f.NoMasqAllReservedRanges }},
		{"enable-ipv6", "", func(f *Flags) bool { return f.EnableIPv6 }},
		{"random-fully", "false", func(f *Flags) bool { return !f.RandomFully }},
		{"to-ports", "1024-29999,32768-65535", func(f *Flags) bool { return f.ToPorts == "1024-29999,32768-65535" }},
		{"config", "/tmp/cfg", func(f *Flags) bool { return f.ConfigPath == "/tmp/cfg" }},
		{"interfaces", "eth0,ens5", func(f *Flags) bool { return f.Interfaces == "eth0,ens5" }},
		{"pin-path", "/sys/fs/bpf/other", func(f *Flags) bool { return f.PinPath == "/sys/fs/bpf/other" }},
		{"attach-mode", "tc", func(f *Flags) bool { return f.AttachMode == "tc" }},
		{"nat-max-entries", "65536", func(f *Flags) bool { return f.NATMaxEntries == 65536 }},
		{"tcp-syn-timeout", "30s", func(f *Flags) bool { return f.TCPSynTimeout == 30*time.Second }},
		{"tcp-established-timeout", "24h", func(f *Flags) bool { return f.TCPEstablishedTimeout == 24*time.Hour }},
		{"tcp-fin-timeout", "1m", func(f *Flags) bool { return f.TCPFinTimeout == time.Minute }},
		{"tcp-rst-timeout", "5s", func(f *Flags) bool { return f.TCPRstTimeout == 5*time.Second }},
		{"udp-timeout", "45s", func(f *Flags) bool { return f.UDPTimeout == 45*time.Second }},
		{"udp-stream-timeout", "10m", func(f *Flags) bool { return f.UDPStreamTimeout == 10*time.Minute }},
		{"icmp-timeout", "15s", func(f *Flags) bool { return f.ICMPTimeout == 15*time.Second }},
		{"gc-interval", "1s", func(f *Flags) bool { return f.GCInterval == time.Second }},
	} {
		forms := map[string][]string{}
		if tc.value == "" {
			forms["-flag"] = []string{"-" + tc.name}
			forms["--flag"] = []string{"--" + tc.name}
			forms["--flag=true"] = []string{"--" + tc.name + "=true"}
		} else {
			forms["-flag=value"] = []string{"-" + tc.name + "=" + tc.value}
			forms["--flag=value"] = []string{"--" + tc.name + "=" + tc.value}
			if tc.value != "false" { // Go bool flags take no separate value
				forms["-flag value"] = []string{"-" + tc.name, tc.value}
				forms["--flag value"] = []string{"--" + tc.name, tc.value}
			}
		}
		for form, args := range forms {
			t.Run(tc.name+"/"+form, func(t *testing.T) {
				fs, f := newFlags(t)
				if err := fs.Parse(args); err != nil {
					t.Fatalf("Parse(%q): %v", args, err)
				}
				if !tc.check(f) {
					t.Errorf("Parse(%q) gave %+v", args, *f)
				}
				if fs.NArg() != 0 {
					t.Errorf("Parse(%q) left arguments %q", args, fs.Args())
				}
				if err := f.Validate(); err != nil {
					t.Errorf("Validate after %q: %v", args, err)
				}
			})
		}
	}
}

func TestFlagParseErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"unknown flag", []string{"--no-such-flag"}},
		{"unknown flag with value", []string{"--masq-chian=X"}},
		{"bare number duration", []string{"--tcp-syn-timeout=60"}},
		{"bad duration", []string{"--gc-interval=often"}},
		{"bad integer", []string{"--nat-max-entries=lots"}},
		{"bad bool", []string{"--random-fully=sometimes"}},
		{"missing value", []string{"--config"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fs, _ := newFlags(t)
			err := fs.Parse(tc.args)
			if err == nil || errors.Is(err, flag.ErrHelp) {
				t.Errorf("Parse(%q) = %v, want a parse error", tc.args, err)
			}
		})
	}
	t.Run("help", func(t *testing.T) {
		fs, _ := newFlags(t)
		if err := fs.Parse([]string{"-h"}); !errors.Is(err, flag.ErrHelp) {
			t.Errorf("Parse(-h) = %v, want flag.ErrHelp", err)
		}
	})
}

func TestKlogFlags(t *testing.T) {
	restoreKlogFlags(t, "v", "logtostderr", "vmodule", "alsologtostderr", "stderrthreshold")
	fs, _ := newFlags(t)
	args := []string{"--v=4", "-logtostderr=false", "--vmodule=watch=5", "--alsologtostderr", "--stderrthreshold=ERROR"}
	if err := fs.Parse(args); err != nil {
		t.Fatalf("Parse(%q): %v", args, err)
	}
	if got := fs.Lookup("v").Value.String(); got != "4" {
		t.Errorf("--v = %s, want 4", got)
	}
	for _, name := range []string{"log_dir", "log_file", "add_dir_header", "skip_headers", "one_output", "log_backtrace_at"} {
		if fs.Lookup(name) == nil {
			t.Errorf("klog flag --%s is not registered", name)
		}
	}
}

func TestValidateRejects(t *testing.T) {
	for _, tc := range []struct {
		name string
		edit func(f *Flags)
		want []string
	}{
		{"empty masq-chain", func(f *Flags) { f.MasqChain = "" }, []string{"--masq-chain"}},
		{"long masq-chain", func(f *Flags) { f.MasqChain = strings.Repeat("C", 29) }, []string{"--masq-chain", "28"}},
		{"masq-chain with space", func(f *Flags) { f.MasqChain = "IP MASQ" }, []string{"--masq-chain", "white space"}},
		{"masq-chain built-in", func(f *Flags) { f.MasqChain = "POSTROUTING" }, []string{"--masq-chain", `"POSTROUTING"`, "built-in"}},
		{"to-ports garbage", func(f *Flags) { f.ToPorts = "many" }, []string{"--to-ports", `"many"`}},
		{"to-ports reversed", func(f *Flags) { f.ToPorts = "2000-1000" }, []string{"--to-ports", "backwards"}},
		{"to-ports too many", func(f *Flags) { f.ToPorts = "1,2,3,4,5,6,7,8,9" }, []string{"--to-ports", "at most 8"}},
		{"empty config", func(f *Flags) { f.ConfigPath = "" }, []string{"--config"}},
		{"empty interface item", func(f *Flags) { f.Interfaces = "eth0,,eth1" }, []string{"--interfaces", "empty"}},
		{"trailing comma in interfaces", func(f *Flags) { f.Interfaces = "eth0," }, []string{"--interfaces", "empty"}},
		{"long interface name", func(f *Flags) { f.Interfaces = "abcdefghijklmnop" }, []string{"--interfaces", `"abcdefghijklmnop"`, "15"}},
		{"interface alias", func(f *Flags) { f.Interfaces = "eth0:1" }, []string{"--interfaces", `"eth0:1"`}},
		{"interface with slash", func(f *Flags) { f.Interfaces = "a/b" }, []string{"--interfaces", `"a/b"`}},
		{"interface dot", func(f *Flags) { f.Interfaces = "." }, []string{"--interfaces", `"."`}},
		{"relative pin-path", func(f *Flags) { f.PinPath = "bpf/ip-masq-agent" }, []string{"--pin-path", "absolute"}},
		{"empty pin-path", func(f *Flags) { f.PinPath = "" }, []string{"--pin-path", "empty"}},
		{"root pin-path", func(f *Flags) { f.PinPath = "//" }, []string{"--pin-path"}},
		{"attach-mode", func(f *Flags) { f.AttachMode = "xdp" }, []string{"--attach-mode", `"xdp"`, "auto", "tcx", "tc"}},
		{"attach-mode case", func(f *Flags) { f.AttachMode = "TCX" }, []string{"--attach-mode"}},
		{"nat-max-entries zero", func(f *Flags) { f.NATMaxEntries = 0 }, []string{"--nat-max-entries", "0"}},
		{"nat-max-entries negative", func(f *Flags) { f.NATMaxEntries = -5 }, []string{"--nat-max-entries"}},
		{"nat-max-entries too small", func(f *Flags) { f.NATMaxEntries = MinNATEntries - 1 }, []string{"--nat-max-entries"}},
		{"nat-max-entries too large", func(f *Flags) { f.NATMaxEntries = MaxNATEntries + 1 }, []string{"--nat-max-entries"}},
		{"tcp-syn-timeout", func(f *Flags) { f.TCPSynTimeout = 0 }, []string{"--tcp-syn-timeout", "positive"}},
		{"tcp-established-timeout", func(f *Flags) { f.TCPEstablishedTimeout = -time.Second }, []string{"--tcp-established-timeout"}},
		{"tcp-fin-timeout", func(f *Flags) { f.TCPFinTimeout = 0 }, []string{"--tcp-fin-timeout"}},
		{"tcp-rst-timeout", func(f *Flags) { f.TCPRstTimeout = 0 }, []string{"--tcp-rst-timeout"}},
		{"udp-timeout", func(f *Flags) { f.UDPTimeout = 0 }, []string{"--udp-timeout"}},
		{"udp-stream-timeout", func(f *Flags) { f.UDPStreamTimeout = 0 }, []string{"--udp-stream-timeout"}},
		{"icmp-timeout", func(f *Flags) { f.ICMPTimeout = 0 }, []string{"--icmp-timeout"}},
		{"gc-interval", func(f *Flags) { f.GCInterval = 0 }, []string{"--gc-interval"}},
		{"every bad flag is named", func(f *Flags) {
			f.AttachMode = "x"
			f.ToPorts = "0"
			f.Interfaces = "this-name-is-too-long"
			f.GCInterval = 0
			f.PinPath = "rel"
		}, []string{"--attach-mode", "--to-ports", "--interfaces", "--gc-interval", "--pin-path"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := defaultFlags()
			tc.edit(&f)
			err := f.Validate()
			if err == nil {
				t.Fatalf("Validate(%+v) = nil, want an error", f)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

func TestValidateNamesTheFlagOnEveryLine(t *testing.T) {
	f := defaultFlags()
	f.Interfaces = "eth0,,this-name-is-too-long,a/b"
	f.AttachMode = "x"
	f.UDPTimeout = 0
	err := f.Validate()
	if err == nil {
		t.Fatal("want an error")
	}
	lines := strings.Split(err.Error(), "\n")
	if len(lines) != 5 {
		t.Errorf("want 5 problems, got %d:\n%v", len(lines), err)
	}
	for _, l := range lines {
		if !strings.HasPrefix(l, "--") {
			t.Errorf("line %q does not start with the flag's name", l)
		}
	}
}

func TestValidateAcceptsBounds(t *testing.T) {
	for _, n := range []int{MinNATEntries, MaxNATEntries} {
		f := defaultFlags()
		f.NATMaxEntries = n
		if err := f.Validate(); err != nil {
			t.Errorf("--nat-max-entries=%d: %v", n, err)
		}
	}
	f := defaultFlags()
	f.Interfaces = "abcdefghijklmno" // 15 characters, the kernel's limit
	f.MasqChain = strings.Repeat("C", 28)
	f.PinPath = "/sys/fs/bpf/"
	if err := f.Validate(); err != nil {
		t.Errorf("limits: %v", err)
	}
	// A built-in chain name is only refused when it would be removed.
	f = defaultFlags()
	f.MasqChain, f.RemoveIPTablesChain = "POSTROUTING", false
	if err := f.Validate(); err != nil {
		t.Errorf("--masq-chain=POSTROUTING --remove-iptables-chain=false: %v", err)
	}
}

func TestParsePortRanges(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []PortRange
		err  string // substring of the error; "" for success
	}{
		{in: "1024-29999,32768-65535", want: []PortRange{{1024, 29999}, {32768, 65535}}},
		{in: "42-44,80", want: []PortRange{{42, 44}, {80, 80}}},
		{in: "42,43,44", want: []PortRange{{42, 42}, {43, 43}, {44, 44}}},
		{in: "43,42", want: []PortRange{{43, 43}, {42, 42}}},
		{in: "80-88,42-44", want: []PortRange{{80, 88}, {42, 44}}},
		{in: "42-44,42-43", want: []PortRange{{42, 44}, {42, 43}}},
		{in: "42", want: []PortRange{{42, 42}}},
		{in: "42-42", want: []PortRange{{42, 42}}},
		{in: "1-65535", want: []PortRange{{1, 65535}}},
		{in: "01024-065535", want: []PortRange{{1024, 65535}}},
		{in: "1,2,3,4,5,6,7,8", want: []PortRange{{1, 1}, {2, 2}, {3, 3}, {4, 4}, {5, 5}, {6, 6}, {7, 7}, {8, 8}}},

		{in: "", err: "no ports"},
		{in: "42, 43", err: `" 43"`},
		{in: " 42", err: `" 42"`},
		{in: "42 - 44", err: `"42 - 44"`},
		{in: "42-43-44", err: `"42-43-44"`},
		{in: "4x", err: `"4x"`},
		{in: "4x-44", err: `"4x-44"`},
		{in: "42-4x", err: `"42-4x"`},
		{in: "-44", err: `"-44"`},
		{in: "42-", err: `"42-"`},
		{in: "+42", err: `"+42"`},
		{in: "42-41", err: "backwards"},
		{in: ",", err: "empty item"},
		{in: "42,", err: "empty item"},
		{in: ",42", err: "empty item"},
		{in: "42,,43", err: "empty item"},
		{in: "0", err: "port 0"},
		{in: "0-1024", err: "port 0"},
		{in: "65536", err: "larger than 65535"},
		{in: "1024-65536", err: "larger than 65535"},
		{in: "99999999999999999999", err: "larger than 65535"},
		{in: "1,2,3,4,5,6,7,8,9", err: "at most 8"},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParsePortRanges(tc.in)
			if tc.err == "" {
				if err != nil {
					t.Fatalf("ParsePortRanges(%q): %v", tc.in, err)
				}
				if !reflect.DeepEqual(got, tc.want) {
					t.Errorf("ParsePortRanges(%q) = %v, want %v", tc.in, got, tc.want)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("ParsePortRanges(%q) = %v, %v; want an error mentioning %q", tc.in, got, err, tc.err)
			}
		})
	}
}

func TestPortRangesOfFlags(t *testing.T) {
	f := defaultFlags()
	if got, want := f.PortRanges(), []PortRange{{1024, 65535}}; !reflect.DeepEqual(got, want) {
		t.Errorf("default = %v, want %v", got, want)
	}
	f.ToPorts = "32768-65535,2000"
	if got, want := f.PortRanges(), []PortRange{{32768, 65535}, {2000, 2000}}; !reflect.DeepEqual(got, want) {
		t.Errorf("%s = %v, want %v", f.ToPorts, got, want)
	}
	f.ToPorts = "bad"
	if got := f.PortRanges(); got != nil {
		t.Errorf("invalid --to-ports = %v, want nil", got)
	}
}

func TestPortRangeString(t *testing.T) {
	for _, tc := range []struct {
		r    PortRange
		s    string
		size int
	}{
		{PortRange{1024, 65535}, "1024-65535", 64512},
		{PortRange{80, 80}, "80", 1},
		{PortRange{1, 65535}, "1-65535", 65535},
	} {
		if got := tc.r.String(); got != tc.s {
			t.Errorf("String() = %q, want %q", got, tc.s)
		}
		if got := tc.r.Size(); got != tc.size {
			t.Errorf("%v.Size() = %d, want %d", tc.r, got, tc.size)
		}
		back, err := ParsePortRanges(tc.r.String())
		if err != nil || len(back) != 1 || back[0] != tc.r {
			t.Errorf("round trip of %v gave %v, %v", tc.r, back, err)
		}
	}
}

func TestInterfaceList(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []string
	}{
		{"", nil},
		{"  ", nil},
		{"eth0", []string{"eth0"}},
		{"eth0,ens5", []string{"eth0", "ens5"}},
		{"eth0, ens5 ", []string{"eth0", "ens5"}},
		{"eth0,eth0,ens5", []string{"eth0", "ens5"}},
		{"veth-12345678ab", []string{"veth-12345678ab"}},
		{"eth0,,ens5", nil}, // invalid: Validate reports it
	} {
		f := Flags{Interfaces: tc.in}
		if got := f.InterfaceList(); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("InterfaceList(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestOptionsOfFlags(t *testing.T) {
	f := Flags{NoMasqAllReservedRanges: true, EnableIPv6: true}
	if got := f.Options(); got != (Options{NoMasqAllReservedRanges: true, EnableIPv6: true}) {
		t.Errorf("Options() = %+v", got)
	}
}

func TestLogFlags(t *testing.T) {
	var mu sync.Mutex
	var lines []string
	klog.SetLogger(funcr.New(func(prefix, args string) {
		mu.Lock()
		defer mu.Unlock()
		lines = append(lines, args)
	}, funcr.Options{}))
	t.Cleanup(klog.ClearLogger)

	fs, _ := newFlags(t)
	if err := fs.Parse([]string{"--to-ports=1024-2047", "--interfaces=eth0"}); err != nil {
		t.Fatal(err)
	}
	LogFlags(fs)

	mu.Lock()
	defer mu.Unlock()
	n := 0
	fs.VisitAll(func(*flag.Flag) { n++ })
	if len(lines) != n {
		t.Errorf("logged %d lines for %d flags:\n%s", len(lines), n, strings.Join(lines, "\n"))
	}
	for _, want := range []string{
		`"name"="--to-ports" "value"="1024-2047"`,
		`"name"="--interfaces" "value"="eth0"`,
		`"name"="--random-fully" "value"="true"`,
		`"name"="--v" "value"="0"`,
	} {
		found := false
		for _, l := range lines {
			found = found || strings.Contains(l, want)
		}
		if !found {
			t.Errorf("no line contains %s:\n%s", want, strings.Join(lines, "\n"))
		}
	}
}
