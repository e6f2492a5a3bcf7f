package config

import (
	"strings"
	"testing"
)

// TestListenAddressFlags: --metrics-address and --health-address take
// host:port with an IP, "localhost" or no host, or "" to disable; anything
// else fails Validate with a message naming the flag.
func TestListenAddressFlags(t *testing.T) {
	for _, tc := range []struct {
		arg     string
		wantErr string // "" for valid
	}{
		{"--metrics-address=:9441", ""},
		{"--metrics-address=", ""},
		{"--metrics-address=0.0.0.0:80", ""},
		{"--metrics-address=[::1]:9441", ""},
		{"--health-address=localhost:9442", ""},
		{"--health-address=", ""},
		{"--metrics-address=9441", "--metrics-address: \"9441\" is not host:port"},
		{"--metrics-address=:0", "--metrics-address: \":0\": port \"0\" is not a number from 1 to 65535"},
		{"--metrics-address=:65536", "--metrics-address"},
		{"--metrics-address=:http", "--metrics-address"},
		{"--health-address=node1:9442", "--health-address: \"node1:9442\": host \"node1\" is not an IP address"},
	} {
		fs, f := newFlags(t)
		if err := fs.Parse([]string{tc.arg}); err != nil {
			t.Fatalf("%s: parse: %v", tc.arg, err)
		}
		err := f.Validate()
		switch {
		case tc.wantErr == "" && err != nil:
			t.Errorf("%s: unexpected error: %v", tc.arg, err)
		case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
			t.Errorf("%s: error %v, want one containing %q", tc.arg, err, tc.wantErr)
		}
	}
}
