package main

import (
	"context"
	"fmt"
	"time"

	"k8s.io/klog/v2"

	"github.com/ipmasq-ebpf/ip-masq-agent/config"
	"github.com/ipmasq-ebpf/ip-masq-agent/loader"
	"github.com/ipmasq-ebpf/ip-masq-agent/maps"
)

// configDebounce lets a writer finish a file before it is read (docs/behaviour.md §2.6):
// the directory must have been quiet this long. A writer that truncates and
// rewrites in place sends an event per write, and a file found empty is read
// again after emptyRecheck (configsync.go), so this can stay short: it is
// part of every change's time to take effect.
const configDebounce = 10 * time.Millisecond

// runAgent loads the datapath, fills its maps, attaches it and then keeps
// it in sync with the config file, the interfaces and the clock until ctx
// ends.
func runAgent(ctx context.Context, f *config.Flags) error {
	// Listening first: a taken port ends the start before the datapath is
	// touched.
	obs, err := startObserver(ctx, f)
	if err != nil {
		return err
	}
	dp, err := loader.Open(loader.Options{PinPath: f.PinPath, NATMaxEntries: uint32(f.NATMaxEntries), SmallIPv6: !f.EnableIPv6})
	if err != nil {
		return err
	}
	defer dp.Close()
	obs.setDatapath(dp)

	settings, err := maps.OpenSettings(dp)
	if err != nil {
		return err
	}
	var ranges []maps.PortRange
	for _, r := range f.PortRanges() {
		ranges = append(ranges, maps.PortRange{First: r.First, Last: r.Last})
	}
	if err := settings.SetPorts(ranges, f.RandomFully); err != nil {
		return err
	}
	if err := settings.SetIPv6(f.EnableIPv6); err != nil {
		return err
	}
	timeouts := maps.Timeouts{
		TCPSyn: f.TCPSynTimeout, TCPEstablished: f.TCPEstablishedTimeout, TCPFin: f.TCPFinTimeout,
		TCPRst: f.TCPRstTimeout, UDP: f.UDPTimeout, UDPStream: f.UDPStreamTimeout, ICMP: f.ICMPTimeout,
	}
	// Before the programs take over: they reclaim expired flows at port
	// allocation by these, also while no agent runs.
	if err := settings.SetTimeouts(timeouts); err != nil {
		return err
	}
	if err := maps.NewSources(dp, settings).Set(f.SourcePrefixes()); err != nil {
		return err
	}

	// The maps are filled before our programs take over (docs/behaviour.md §10).
	nonMasq := maps.NewNonMasq(dp, settings)
	cfg := newConfigSync(f.ConfigPath, f.Options(), nonMasq)
	cfg.report = obs.configSynced
	cfg.sync()

	ifaces := newInterfaceSet(dp, settings, loader.Mode(f.AttachMode), f.InterfaceList())
	if list := f.MasqueradeAddresses(); len(list) > 0 {
		ifaces.chosen = newMasqueradeAddresses(list)
		ifaces.chosen.report = obs.metrics.masqueradeAddress
	}
	ifaces.heal.repairs = newRepairCounter(obs.metrics.reg)
	ifaces.localReport = obs.metrics.localAddresses
	if err := ifaces.reconcile(); err != nil {
		return err
	}
	// Our programs have taken over: maps carried over from incompatible
	// pins (a new --nat-max-entries, an upgrade) get what the old programs
	// created meanwhile, and their pins.
	if err := dp.CompleteMigration(); err != nil {
		klog.ErrorS(err, "Carrying pinned maps over was incomplete")
	}
	removeIPTablesChain(f) // after the attach: see there
	clock := &datapathClock{clock: maps.NewClock(dp), settings: settings}
	go clock.calibrate() // 200 ms; the programs read the clock meanwhile
	// The expiry and the eviction count share these: evictions are what
	// left the LRU maps without the expiry removing it. The count has its
	// base and its metric before the agent reports ready.
	nats := []*maps.NATTable{maps.NewNATTable(dp), maps.NewNAT6Table(dp)}
	inbounds := []*maps.Inbound{maps.NewInbound(dp), maps.NewInbound6(dp)}
	exempts := []*maps.Inbound{maps.NewNomasqTCP(dp), maps.NewNomasqTCP6(dp)}
	evictionsDone := trackEvictions(ctx, obs.metrics.reg, maps.NewLRUEvictions(dp, [2]*maps.NATTable(nats), [2]*maps.Inbound(inbounds), [2]*maps.Inbound(exempts)), f.GCInterval)
	defer func() { <-evictionsDone }() // the datapath closes after its last walk
	klog.InfoS("Datapath ready", "pinPath", f.PinPath, "interfaces", ifaces.attachedNames(), "build", dp.Variant)
	obs.setStarted()

	changes, err := config.Watch(ctx, f.ConfigPath, configDebounce)
	if err != nil {
		return fmt.Errorf("watch config: %w", err)
	}
	netEvents, err := watchNetlink(ctx)
	if err != nil {
		return err
	}
	tcEvents, err := watchTC(ctx)
	if err != nil {
		return err
	}
	verify := time.NewTicker(verifyInterval)
	defer verify.Stop()
	heartbeat := time.NewTicker(loopHeartbeat)
	defer heartbeat.Stop()
	resync := time.NewTimer(cfg.interval())
	defer resync.Stop()

	// The expiry runs on its own goroutine: a pass over a large table
	// must not hold up config syncs, interface repairs or SIGTERM.
	obs.progress.setInterval(f.GCInterval)
	exp := newExpiry(f.GCInterval, timeouts, nats, inbounds, exempts, nonMasq, clock, obs)
	expiryDone := make(chan struct{})
	defer func() { <-expiryDone }() // the datapath closes after the last pass
	go func() {
		defer close(expiryDone)
		exp.run(ctx)
	}()

	for {
		obs.progress.loop(time.Now())
		select {
		case <-ctx.Done():
			return nil
		case <-heartbeat.C:
		case <-changes:
			cfg.changed()
			resync.Reset(cfg.interval())
		case <-resync.C:
			cfg.sync()
			if err := ifaces.reconcile(); err != nil {
				klog.ErrorS(err, "Interface sync failed")
			}
			resync.Reset(cfg.interval())
		case <-netEvents:
			if err := ifaces.reconcile(); err != nil {
				klog.ErrorS(err, "Interface sync failed")
			}
		case <-tcEvents:
			if err := ifaces.verify(); err != nil {
				klog.ErrorS(err, "Attachment check failed")
			}
		case <-verify.C:
			if err := ifaces.verify(); err != nil {
				klog.ErrorS(err, "Attachment check failed")
			}
		}
	}
}
