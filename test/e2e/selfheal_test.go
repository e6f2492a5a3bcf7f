package e2e

import (
	"fmt"
	"path/filepath"
	"slices"
	"sort"
	"testing"
	"time"

	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"

	"github.com/ipmasq-ebpf/ip-masq-agent/loader"
)

// repairDeadline is how long a removal may leave a hook without our
// program: the agent repairs within a second (events at once, a 250 ms
// check otherwise); the rest is margin for a loaded machine.
const repairDeadline = 3 * time.Second

// repairRuns is how often each removal is repeated to measure the time to
// repair (median and worst are logged).
const repairRuns = 10

// removal takes our programs off the uplink in one way, and returns when the
// uplink is back in a state where the agent can attach again (the time to
// repair is measured from there).
type removal struct {
	name  string
	cause map[string]string // by mode: the repairs_total cause it must count; none when absent
	modes []string
	do    func(t *testing.T, tp *Topology, a *Agent)
}

var removals = []removal{
	{name: "link_detached", cause: map[string]string{"tcx": "link_detached"}, modes: []string{"tcx"}, do: func(t *testing.T, tp *Topology, a *Agent) {
		// What "bpftool link detach id N" does: the kernel sends no event.
		// The agent pins a new link just after attaching it: wait for it.
		var l link.Link
		err := eventually(repairDeadline, func() (err error) {
			l, err = link.LoadPinnedLink(filepath.Join(a.PinPath, "links", Uplink+"_egress"), nil)
			return err
		})
		if err != nil {
			t.Fatalf("open the pinned egress link: %v", err)
		}
		defer l.Close()
		if err := l.Detach(); err != nil {
			t.Fatalf("detach the egress link: %v", err)
		}
	}},
	{name: "filter_deleted", cause: map[string]string{"tc": "filter_deleted"}, modes: []string{"tc"}, do: func(t *testing.T, tp *Topology, a *Agent) {
		tp.Node.MustExec(t, "tc", "filter", "del", "dev", Uplink, "egress", "pref", "1") // ours: the head of an empty hook
	}},
	{name: "qdisc_deleted", cause: map[string]string{"tc": "qdisc_deleted"}, modes: []string{"tc"}, do: func(t *testing.T, tp *Topology, a *Agent) {
		tp.Node.MustExec(t, "tc", "qdisc", "del", "dev", Uplink, "clsact")
	}},
	// A rename keeps both tcx programs and the clsact qdisc: the agent
	// only has to find the interface again, and repairs nothing.
	{name: "renamed", modes: []string{"tcx", "tc"}, do: func(t *testing.T, tp *Topology, a *Agent) {
		tp.Node.IP(t, "link", "set", Uplink, "down")
		tp.Node.IP(t, "link", "set", Uplink, "name", "uplink-away")
		time.Sleep(300 * time.Millisecond) // long enough for the agent to see it gone
		tp.Node.IP(t, "link", "set", "uplink-away", "name", Uplink)
		restoreUplink(t, tp, false)
	}},
	// A move to another namespace destroys the clsact qdisc with our
	// filters; tcx programs travel with the device and need no repair.
	{name: "netns_moved", cause: map[string]string{"tc": "interface_returned"}, modes: []string{"tcx", "tc"}, do: func(t *testing.T, tp *Topology, a *Agent) {
		away := newNetns(t, tp.ID, "away"+randomSuffix(4))
		tp.Node.IP(t, "link", "set", Uplink, "netns", away.Name)
		time.Sleep(300 * time.Millisecond)
		away.IP(t, "link", "set", Uplink, "netns", tp.Node.Name)
		restoreUplink(t, tp, false)
	}},
	{name: "recreated", cause: map[string]string{"tcx": "interface_recreated", "tc": "interface_recreated"}, modes: []string{"tcx", "tc"}, do: func(t *testing.T, tp *Topology, a *Agent) {
		tp.Node.IP(t, "link", "del", Uplink) // takes the router's end with it
		time.Sleep(300 * time.Millisecond)
		tp.Node.IP(t, "link", "add", Uplink, "type", "veth", "peer", "name", "to-node", "netns", tp.Router.Name)
		restoreUplink(t, tp, true)
	}},
}

// restoreUplink gives the node's uplink back its address and default
// route (and, when it is new, the router's end its address, route and
// offload setting), as the topology built them.
func restoreUplink(t *testing.T, tp *Topology, newPeer bool) {
	t.Helper()
	tp.Node.IP(t, "addr", "replace", fmt.Sprintf("%s/%d", NodeIP, NodeLAN.Bits()), "dev", Uplink)
	tp.Node.IP(t, "link", "set", Uplink, "up")
	tp.Node.IP(t, "route", "replace", "default", "via", RouterNodeIP.String())
	if newPeer {
		tp.Router.IP(t, "addr", "add", fmt.Sprintf("%s/%d", RouterNodeIP, NodeLAN.Bits()), "dev", "to-node")
		tp.Router.IP(t, "link", "set", "to-node", "up")
		tp.Router.IP(t, "route", "replace", ClusterCIDR.String(), "via", NodeIP.String())
		tp.Router.MustExec(t, "ethtool", "-K", "to-node", "tx", "off")
	}
}

// waitAttached polls the kernel (not the agent) until programs of ours run
// on both hooks of the uplink, and returns how long that took.
func waitAttached(tp *Topology, timeout time.Duration) (time.Duration, error) {
	start := time.Now()
	var last error
	err := tp.Node.Do(func() error {
		for time.Since(start) < timeout {
			in, eg, err := uplinkAttachment()
			if err == nil && in != "" && eg != "" {
				return nil
			}
			last = fmt.Errorf("ingress %q egress %q: %v", in, eg, err)
			time.Sleep(2 * time.Millisecond)
		}
		return fmt.Errorf("not attached %v after the removal: %v", timeout, last)
	})
	return time.Since(start), err
}

func uplinkAttachment() (loader.Mode, loader.Mode, error) {
	l, err := netlink.LinkByName(Uplink)
	if err != nil {
		return "", "", err
	}
	return loader.Attachment(l.Attrs().Index)
}

// TestSelfHeal: whatever takes our programs off the uplink, the same agent
// process attaches them again within a second (checked with a margin),
// counts the repair by cause, and pod traffic is masqueraded again.
func TestSelfHeal(t *testing.T) {
	forEachMode(t, func(t *testing.T, mode string) {
		tp, a := startAgent(t, AgentOptions{Mode: mode, Config: cfgPrivate})
		pid := a.Pid()
		if _, err := waitAttached(tp, repairDeadline); err != nil {
			t.Fatal(err)
		}
		for _, r := range removals {
			if !slices.Contains(r.modes, mode) {
				continue
			}
			var took []time.Duration
			cause := r.cause[mode]
			before, _ := scrape(t, tp.Node).Value("ip_masq_agent_attach_repairs_total", "interface="+Uplink, "cause="+cause)
			for i := 0; i < repairRuns; i++ {
				r.do(t, tp, a)
				d, err := waitAttached(tp, repairDeadline)
				if err != nil {
					t.Fatalf("%s, run %d: %v\n%s", r.name, i, err, a.Logs())
				}
				took = append(took, d)
			}
			sort.Slice(took, func(i, j int) bool { return took[i] < took[j] })
			t.Logf("%s %s: removal to re-attach over %d runs: median %v, worst %v", mode, r.name, repairRuns,
				took[len(took)/2], took[len(took)-1])
			if _, err := waitSeen(tp.Pod1, tp.Internet, NodeIP, repairDeadline); err != nil {
				t.Errorf("after %s: %v", r.name, err)
			}
			if cause != "" {
				after, _ := scrape(t, tp.Node).Value("ip_masq_agent_attach_repairs_total", "interface="+Uplink, "cause="+cause)
				if after-before < repairRuns {
					t.Errorf("after %d runs of %s: attach_repairs_total{cause=%s} rose by %v, want at least %d", repairRuns, r.name, cause, after-before, repairRuns)
				}
			}
			if a.Pid() != pid || !a.Running() {
				t.Fatalf("after %s: the agent restarted or stopped (pid %d, was %d)", r.name, a.Pid(), pid)
			}
		}
		if err := waitProbe(tp.Node, "/healthz", 200, repairDeadline); err != nil {
			t.Errorf("after the repairs: %v", err)
		}
	})
}
