package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/vishvananda/netlink"
	"k8s.io/klog/v2"

	"github.com/ipmasq-ebpf/ip-masq-agent/config"
	"github.com/ipmasq-ebpf/ip-masq-agent/loader"
)

// observer is the agent's face to the outside: /metrics, /healthz and
// /readyz. The run loop tells it what happened; the HTTP handlers ask the
// kernel what is true now.
type observer struct {
	metrics *agentMetrics
	dp      atomic.Pointer[loader.Datapath]
	started atomic.Bool // the first attach pass finished ("Datapath ready")

	mu         sync.Mutex
	synced     bool  // a config sync has run
	lastSyncOK error // why the file in place is not in force; nil when it is

	progress progress // of the run loop and the expiry (progress.go)
}

func newObserver() *observer { return &observer{metrics: newAgentMetrics()} }

// setDatapath is called once the datapath is loaded.
func (o *observer) setDatapath(dp *loader.Datapath) {
	o.dp.Store(dp)
	o.metrics.setDatapath(dp)
}

// setStarted is called when the first attach pass is done.
func (o *observer) setStarted() { o.started.Store(true) }

// configSynced records one config sync for metrics and readiness.
func (o *observer) configSynced(r syncResult) {
	o.metrics.configSynced(r)
	o.mu.Lock()
	defer o.mu.Unlock()
	o.synced = true
	o.lastSyncOK = r.err
}

// passStarted, tableCollected and passEnded are the expiry's reports.
func (o *observer) passStarted(now time.Time)    { o.progress.passStarted(now) }
func (o *observer) passEnded(now time.Time)      { o.progress.passEnded(now) }
func (o *observer) passProgressed(now time.Time) { o.progress.passProgressed(now) }
func (o *observer) tableCollected(r tableResult) {
	o.metrics.collected(r)
	o.progress.table(r.table, r.err)
}

// serve listens on the metrics and health addresses (one listener when they
// are equal, none for an empty address) and serves until ctx ends. It
// returns once listening, so that a taken port fails the start before the
// datapath is touched.
func (o *observer) serve(ctx context.Context, metricsAddr, healthAddr string) error {
	type endpoint struct {
		addr  string
		mux   *http.ServeMux
		paths []string
	}
	var endpoints []*endpoint
	at := func(addr string) *endpoint {
		for _, e := range endpoints {
			if e.addr == addr {
				return e
			}
		}
		e := &endpoint{addr: addr, mux: http.NewServeMux()}
		endpoints = append(endpoints, e)
		return e
	}
	if metricsAddr != "" {
		e := at(metricsAddr)
		e.mux.Handle("/metrics", promhttp.HandlerFor(o.metrics.reg, promhttp.HandlerOpts{
			ErrorHandling: promhttp.ContinueOnError, // serve what could be read
		}))
		e.paths = append(e.paths, "/metrics")
	}
	if healthAddr != "" {
		e := at(healthAddr)
		e.mux.HandleFunc("/healthz", o.handle(o.healthy))
		e.mux.HandleFunc("/readyz", o.handle(o.ready))
		e.paths = append(e.paths, "/healthz", "/readyz")
	}
	listeners := make([]net.Listener, len(endpoints))
	for i, e := range endpoints {
		l, err := net.Listen("tcp", e.addr)
		if err != nil {
			for _, l := range listeners[:i] {
				l.Close()
			}
			if errors.Is(err, syscall.EADDRINUSE) {
				return fmt.Errorf("listen on %s for %s: the port is taken (by another ip-masq-agent on this node?); "+
					"choose another with --metrics-address or --health-address: %w", e.addr, strings.Join(e.paths, " "), err)
			}
			return fmt.Errorf("listen on %s for %s: %w", e.addr, strings.Join(e.paths, " "), err)
		}
		listeners[i] = l
	}
	for i, e := range endpoints {
		l := listeners[i]
		srv := &http.Server{Handler: e.mux, ReadHeaderTimeout: 10 * time.Second}
		go func() {
			<-ctx.Done()
			shut, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			srv.Shutdown(shut)
		}()
		go func() {
			if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
				klog.ErrorS(err, "HTTP server failed", "address", e.addr)
			}
		}()
		klog.InfoS("Serving", "address", l.Addr().String(), "paths", strings.Join(e.paths, " "))
	}
	return nil
}

// handle turns a check into an endpoint: 200 "ok" or 503 with the reasons,
// one a line.
func (o *observer) handle(check func() []string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		problems := check()
		if len(problems) == 0 {
			fmt.Fprintln(w, "ok")
			return
		}
		w.WriteHeader(http.StatusServiceUnavailable)
		for _, p := range problems {
			fmt.Fprintln(w, p)
		}
		klog.V(2).InfoS("Probe failed", "path", r.URL.Path, "problems", problems)
	}
}

// healthy is the liveness check: the datapath is loaded, its maps answer,
// our programs run on both hooks of every managed interface that exists,
// and neither the run loop nor an expiry pass is stuck. Waiting for an
// interface is not a failure (a restart would not help); a program that
// vanished from a hook is. Expiry errors are not either (see progress.go).
func (o *observer) healthy() []string {
	dp := o.dp.Load()
	if dp == nil {
		return []string{"starting: datapath not loaded yet"}
	}
	problems := o.progress.stuck(time.Now())
	var settings loader.BPFIpmSettings
	if err := dp.Maps.IpmSettings.Lookup(uint32(0), &settings); err != nil {
		problems = append(problems, fmt.Sprintf("map ipm_settings unreachable: %v", err))
	}
	var perCPU []loader.BPFIpmCounters
	if err := dp.Maps.IpmStats.Lookup(uint32(0), &perCPU); err != nil {
		problems = append(problems, fmt.Sprintf("map ipm_stats unreachable: %v", err))
	}
	if !o.started.Load() {
		return append(problems, "starting: first attach not finished")
	}
	ifaces, err := managedInterfaces(dp)
	if err != nil {
		return append(problems, fmt.Sprintf("map ipm_ifaces unreachable: %v", err))
	}
	for _, i := range ifaces {
		switch {
		case i.err != nil:
			problems = append(problems, fmt.Sprintf("interface %s: %v", i.name, i.err))
		case i.ingress == "" || i.egress == "":
			problems = append(problems, fmt.Sprintf("interface %s: datapath not attached (ingress %q, egress %q)", i.name, i.ingress, i.egress))
		}
	}
	return problems
}

// ready is the readiness check: healthy, the config file in place is in
// force (a rejected file keeps the last good config running but makes the
// pod unready, which stops a rolling update that ships a bad ConfigMap),
// at least one interface is managed, the maps are still pinned (without
// the pins a restart would lose every flow), and no table's expiry has
// failed expiryFailLimit passes in a row (the table fills up).
func (o *observer) ready() []string {
	problems := append(o.healthy(), o.progress.failing()...)
	o.mu.Lock()
	synced, syncErr := o.synced, o.lastSyncOK
	o.mu.Unlock()
	switch {
	case !synced:
		problems = append(problems, "config not synced yet")
	case syncErr != nil:
		problems = append(problems, fmt.Sprintf("config file not in force, the last good one is: %v", syncErr))
	}
	dp := o.dp.Load()
	if dp == nil || !o.started.Load() {
		return problems
	}
	if ifaces, err := managedInterfaces(dp); err == nil && len(ifaces) == 0 {
		problems = append(problems, "no interface managed yet (waiting for --interfaces, or no default route)")
	}
	if _, err := os.Stat(filepath.Join(dp.PinPath, "ipm_nat4")); err != nil {
		problems = append(problems, fmt.Sprintf("maps no longer pinned under %s: a restart would lose every flow: %v", dp.PinPath, err))
	}
	return problems
}

// interfaceName names an interface index, or returns the index when the
// interface is gone.
func interfaceName(ifindex int) string {
	if l, err := netlink.LinkByIndex(ifindex); err == nil {
		return l.Attrs().Name
	}
	return "ifindex " + strconv.Itoa(ifindex)
}

// startObserver builds the observer and opens its listeners.
func startObserver(ctx context.Context, f *config.Flags) (*observer, error) {
	o := newObserver()
	if err := o.serve(ctx, f.MetricsAddress, f.HealthAddress); err != nil {
		return nil, err
	}
	return o, nil
}
