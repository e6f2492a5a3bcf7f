package config

import (
	"net/netip"
	"reflect"
	"strings"
	"testing"
)

func TestScopingFlagsAccepted(t *testing.T) {
	fs, f := newFlags(t)
	if err := fs.Parse([]string{"--enable-ipv6", "--interfaces=eth0,eth1",
		"--masquerade-address=eth0=192.0.2.10, eth0=2001:db8::10,eth1=198.51.100.7",
		"--source-cidrs=10.244.1.0/24,fd00:10:244:1::/64"}); err != nil {
		t.Fatal(err)
	}
	if err := f.Validate(); err != nil {
		t.Fatal(err)
	}
	want := []MasqueradeAddress{
		{"eth0", netip.MustParseAddr("192.0.2.10")},
		{"eth0", netip.MustParseAddr("2001:db8::10")},
		{"eth1", netip.MustParseAddr("198.51.100.7")},
	}
	if got := f.MasqueradeAddresses(); !reflect.DeepEqual(got, want) {
		t.Errorf("MasqueradeAddresses() = %v, want %v", got, want)
	}
	if got := f.SourcePrefixes(); !reflect.DeepEqual(got, prefixes("10.244.1.0/24", "fd00:10:244:1::/64")) {
		t.Errorf("SourcePrefixes() = %v", got)
	}
	_, unset := newFlags(t)
	if unset.MasqueradeAddresses() != nil || unset.SourcePrefixes() != nil {
		t.Errorf("unset flags must mean nothing")
	}
}

func TestScopingFlagsRejected(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want []string
	}{
		{"no equals sign", []string{"--masquerade-address=192.0.2.10"}, []string{"--masquerade-address", "INTERFACE=ADDRESS"}},
		{"bad address", []string{"--masquerade-address=eth0=192.0.2"}, []string{"--masquerade-address", `"192.0.2"`}},
		{"bad interface", []string{"--masquerade-address=a/b=192.0.2.1"}, []string{"--masquerade-address", `"a/b"`}},
		{"two of a family", []string{"--masquerade-address=eth0=192.0.2.1,eth0=192.0.2.2"}, []string{"two addresses", "192.0.2.1", "192.0.2.2"}},
		{"loopback", []string{"--masquerade-address=eth0=127.0.0.1"}, []string{"cannot be a masquerade address"}},
		{"ipv6 without --enable-ipv6", []string{"--masquerade-address=eth0=2001:db8::1"}, []string{"--enable-ipv6"}},
		{"interface not managed", []string{"--interfaces=eth1", "--masquerade-address=eth0=192.0.2.1"}, []string{"eth0 is not in --interfaces"}},
		{"source not aligned", []string{"--source-cidrs=10.244.1.1/24"}, []string{"--source-cidrs", "not aligned", "10.244.1.0/24"}},
		{"source garbage", []string{"--source-cidrs=pods"}, []string{"--source-cidrs", `"pods"`}},
		{"source empty item", []string{"--source-cidrs=10.0.0.0/8,"}, []string{"--source-cidrs", `CIDR ""`}},
		{"too many sources", []string{"--source-cidrs=" + strings.Repeat("10.0.0.0/8,", 1024) + "10.0.0.0/8"}, []string{"--source-cidrs", "1025 CIDRs", "1024"}},
		{"source ipv6 without --enable-ipv6", []string{"--source-cidrs=fd00::/8"}, []string{"--source-cidrs", "--enable-ipv6"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fs, f := newFlags(t)
			if err := fs.Parse(tc.args); err != nil {
				t.Fatal(err)
			}
			err := f.Validate()
			if err == nil {
				t.Fatalf("Validate(%v) accepted", tc.args)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}
