package main

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"time"

	"k8s.io/klog/v2"

	"github.com/ipmasq-ebpf/ip-masq-agent/config"
	"github.com/ipmasq-ebpf/ip-masq-agent/maps"
)

// configSync reads the config file and makes the datapath follow it. A file
// that fails validation changes nothing: the last good configuration (at
// start, the defaults) stays in force until a good file appears.
type configSync struct {
	path    string
	opts    config.Options
	nonMasq *maps.NonMasq
	current config.Config
	applied bool
	// lastRead is the file's content when it was last applied (nil: the
	// file was missing), so that unrelated events in a busy directory do
	// not rewrite the datapath.
	lastRead []byte
	// rejected is set while the file in place failed validation.
	rejected bool
	// report, when set, is told the outcome of every sync (metrics,
	// readiness).
	report func(syncResult)
}

func newConfigSync(path string, opts config.Options, nm *maps.NonMasq) *configSync {
	return &configSync{path: path, opts: opts, nonMasq: nm, current: config.Default(opts)}
}

// interval is the resync period of the configuration in force.
func (s *configSync) interval() time.Duration { return s.current.ResyncInterval }

// changed re-reads the file after an event in its directory and applies it
// if its content differs from what was applied last.
func (s *configSync) changed() {
	data, err := os.ReadFile(s.path)
	if err == nil && s.applied && !s.rejected && s.lastRead != nil && bytes.Equal(data, s.lastRead) {
		klog.V(4).InfoS("Config directory changed, file did not", "path", s.path)
		return
	}
	if errors.Is(err, fs.ErrNotExist) && s.applied && !s.rejected && s.lastRead == nil {
		return
	}
	s.sync()
}

// sync reads, validates and applies the file, whatever was applied before.
func (s *configSync) sync() {
	start := time.Now()
	data, readErr := os.ReadFile(s.path)
	if errors.Is(readErr, fs.ErrNotExist) {
		data, readErr = nil, nil
	}
	next, err := config.Load(s.path, s.opts)
	if readErr != nil {
		err = readErr
	}
	rejected := err
	s.rejected = rejected != nil
	if err != nil {
		klog.ErrorS(err, "Rejected configuration, keeping the last good one", "path", s.path)
		if s.applied {
			s.observe(syncResult{outcome: syncInvalid, took: time.Since(start), err: err})
			return
		}
		next = config.Default(s.opts)
	}
	if len(next.UnknownKeys) > 0 {
		klog.V(4).InfoS("Ignoring unknown configuration keys", "keys", next.UnknownKeys)
	}
	v4, v6 := next.Effective(s.opts.EnableIPv6)
	set := maps.NewCIDRSet(next.NonMasqueradeCIDRs, append(v4, v6...))
	if err := s.nonMasq.Apply(set); err != nil {
		// The old set stays active: Apply flips only after a full write.
		klog.ErrorS(err, "Could not apply configuration, keeping the last good one")
		s.observe(syncResult{outcome: syncError, took: time.Since(start), err: err})
		return
	}
	s.current, s.applied, s.lastRead = next, true, data
	klog.InfoS("Applied configuration", "cidrs", len(v4), "cidrs6", len(v6), "masqLinkLocal", next.MasqLinkLocal,
		"resyncInterval", next.ResyncInterval, "duration", time.Since(start))
	if rejected != nil {
		// The file was rejected at start: the defaults are in force.
		s.observe(syncResult{outcome: syncInvalid, took: time.Since(start), err: rejected, applied: set})
		return
	}
	s.observe(syncResult{outcome: syncSuccess, took: time.Since(start), applied: set})
}

func (s *configSync) observe(r syncResult) {
	if s.report != nil {
		s.report(r)
	}
}
