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
	nonMasq nonMasqApplier
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

// nonMasqApplier is what configSync needs of *maps.NonMasq.
type nonMasqApplier interface {
	// Apply makes a set the active one, atomically.
	Apply(maps.CIDRSet) error
	// Forget makes the next Apply read the tries back instead of trusting
	// what it wrote.
	Forget()
}

// emptyRecheck is how long a file found empty right after an event is given
// to fill up again before it counts as empty (all defaults). Editors and
// tools that rewrite a file in place truncate it first, and the watch's
// debounce is short.
const emptyRecheck = 100 * time.Millisecond

func newConfigSync(path string, opts config.Options, nm nonMasqApplier) *configSync {
	return &configSync{path: path, opts: opts, nonMasq: nm, current: config.Default(opts)}
}

// interval is the resync period of the configuration in force.
func (s *configSync) interval() time.Duration { return s.current.ResyncInterval }

// changed re-reads the file after an event in its directory and applies it
// if its content differs from what was applied last.
func (s *configSync) changed() {
	data, err := os.ReadFile(s.path)
	if err == nil && len(data) == 0 && len(s.lastRead) > 0 && s.applied {
		// Most likely truncated to be rewritten in place: an empty file
		// would mean all defaults, so give the writer time.
		time.Sleep(emptyRecheck)
		data, err = os.ReadFile(s.path)
	}
	if err == nil && s.applied && !s.rejected && s.lastRead != nil && bytes.Equal(data, s.lastRead) {
		klog.V(4).InfoS("Config directory changed, file did not", "path", s.path)
		return
	}
	if errors.Is(err, fs.ErrNotExist) && s.applied && !s.rejected && s.lastRead == nil {
		return
	}
	s.apply()
}

// sync reads, validates and applies the file, whatever was applied before,
// and checks the datapath's tries rather than trusting what was written: the
// full re-sync at start and every resyncInterval.
func (s *configSync) sync() {
	s.nonMasq.Forget()
	s.apply()
}

// apply reads, validates and applies the file.
func (s *configSync) apply() {
	start := time.Now()
	next, data, err := config.LoadData(s.path, s.opts)
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
	e4, e6 := next.Exceptions(s.opts.EnableIPv6)
	set := maps.NewCIDRSet(next.NonMasqueradeCIDRs, append(v4, v6...)).WithExceptions(append(e4, e6...))
	if err := s.nonMasq.Apply(set); err != nil {
		// The old set stays active: Apply flips only after a full write.
		klog.ErrorS(err, "Could not apply configuration, keeping the last good one")
		s.observe(syncResult{outcome: syncError, took: time.Since(start), err: err})
		return
	}
	s.current, s.applied, s.lastRead = next, true, data
	klog.InfoS("Applied configuration", "cidrs", len(v4), "cidrs6", len(v6), "masqueradeCIDRs", len(e4)+len(e6), "masqLinkLocal", next.MasqLinkLocal,
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
