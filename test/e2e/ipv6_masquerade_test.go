package e2e

import (
	"fmt"
	"net/netip"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
)

// TestIPv6TopologySelfCheck proves the dual-stack harness without any agent
// (docs/behaviour.md §5.7): the internet and far hosts really drop unique-local
// sources on arrival (no socket sees them, Ip6InNoRoutes counts them), the
// VPC host answers the pods' own addresses, and the node's global address
// reaches everything; IPv4 is as in the single-stack topology.
func TestIPv6TopologySelfCheck(t *testing.T) {
	requireRoot(t)
	t.Parallel()
	tp := NewTopology(t, WithLowMTUHop(), WithDualStack())
	failOnChecksumErrors6(t, tp)
	ds := tp.V6

	noRoutes := func() int64 {
		return snmp6(t, tp.Internet.Netns)["Ip6InNoRoutes"] + snmp6(t, tp.Far.Netns)["Ip6InNoRoutes"]
	}
	before := noRoutes()
	expectDropped(t, ds.Pod1, ds.Internet)
	expectDropped(t, ds.Pod2, ds.Far)
	// TCP retries its SYN, so at least one packet per probe: TCP, UDP,
	// ping, for both hosts.
	if n := noRoutes() - before; n < 6 {
		t.Errorf("internet and far hosts dropped %d packets from unique-local sources on arrival (Ip6InNoRoutes), want at least 6", n)
	}

	expectSource(t, ds.Pod1, ds.VPC, Pod1IP6)
	expectSource(t, ds.Pod2, ds.VPC, Pod2IP6)
	expectSource(t, ds.Node, ds.Internet, Node6)
	expectSource(t, ds.Node, ds.Far, Node6)
	expectSource(t, ds.Node, ds.VPC, Node6)
	expectSource(t, tp.Pod1, tp.VPC, Pod1IP)
	expectSource(t, tp.Node, tp.Internet, NodeIP)
	checkOffloads(t, tp)
}

// TestIPv6Masquerade: with --enable-ipv6 and nonMasqueradeCIDRs [10.0.0.0/8,
// fd00::/8], the pods' TCP, UDP and ICMPv6 echo to the internet host leave
// with the node's global IPv6 address (the host drops unique-local
// sources, so an answer proves the translation both ways), to the VPC host
// with the pod's own; the node's own traffic keeps its address and ports;
// IPv4 is masqueraded as before next to it. Pod offloads are on
// (CHECKSUM_PARTIAL through the NAT), the router completes checksums in
// software, and no receiver counts a checksum error (docs/behaviour.md §5.7).
func TestIPv6Masquerade(t *testing.T) {
	forEachMode(t, func(t *testing.T, mode string) {
		tp, a := startAgent6(t, mode)
		ds := tp.V6
		before := readStats6(t, a)

		expectSource(t, ds.Pod1, ds.Internet, Node6)
		expectSource(t, ds.Pod2, ds.Internet, Node6)
		expectSource(t, ds.Pod1, ds.VPC, Pod1IP6)
		expectSource(t, ds.Pod2, ds.VPC, Pod2IP6)
		expectSource(t, ds.Node, ds.Internet, Node6) // ports checked unchanged
		expectSource(t, tp.Pod1, tp.Internet, NodeIP)
		expectSource(t, tp.Pod1, tp.VPC, Pod1IP)

		// The real tool, through the NAT.
		if out, err := tp.Pod2.Exec("ping", "-6", "-n", "-c", "2", "-i", "0.2", "-W", "2", Internet6.String()); err != nil {
			t.Errorf("pod2: ping -6 %s: %v\n%s", Internet6, err, out)
		}

		t.Run("same pod port from both pods", func(t *testing.T) {
			const port = 41000
			c1, err := ds.Pod1.DialTCP(ds.Internet.TCPAddr(), port, ProbeTimeout)
			if err != nil {
				t.Fatal(err)
			}
			defer c1.Close()
			c2, err := ds.Pod2.DialTCP(ds.Internet.TCPAddr(), port, ProbeTimeout)
			if err != nil {
				t.Fatal(err)
			}
			defer c2.Close()
			if c1.Peer.Addr() != Node6 || c2.Peer.Addr() != Node6 || c1.Peer == c2.Peer {
				t.Errorf("server saw %s and %s, want two different ports of %s", c1.Peer, c2.Peer, Node6)
			}
			for i, c := range []*TCPConn{c1, c2, c1, c2} {
				if err := c.Echo([]byte(fmt.Sprintf("pod%d\n", i%2+1)), ProbeTimeout); err != nil {
					t.Errorf("pod%d: %v", i%2+1, err)
				}
			}
			u1, err := ds.Pod1.UDPPeer(ds.Internet.UDPAddr(), port+1, ProbeTimeout)
			if err != nil {
				t.Fatal(err)
			}
			u2, err := ds.Pod2.UDPPeer(ds.Internet.UDPAddr(), port+1, ProbeTimeout)
			if err != nil {
				t.Fatal(err)
			}
			if u1.Peer.Addr() != Node6 || u2.Peer.Addr() != Node6 || u1.Peer == u2.Peer {
				t.Errorf("UDP: server saw %s and %s, want two different ports of %s", u1.Peer, u2.Peer, Node6)
			}
		})

		d := readStats6(t, a).delta(before)
		for _, c := range []string{"egress_new_flow", "egress_translated", "ingress_translated", "egress_nomasq", "egress_host"} {
			if d[c] == 0 {
				t.Errorf("IPv6 counter %s did not grow: %v", c, d)
			}
		}
		for _, c := range []string{"egress_no_iface", "egress_no_port", "egress_table_full", "egress_race", "egress_malformed", "ingress_malformed"} {
			if d[c] != 0 {
				t.Errorf("IPv6 counter %s grew: %v", c, d)
			}
		}
		t.Logf("IPv6 datapath counters: %v", d)
	})
}

// debugPrefixes returns the non-masquerade prefixes the debug command prints
// for the agent's datapath, with their origin.
func debugPrefixes(t *testing.T, a *Agent) map[string]string {
	t.Helper()
	out, stderr, err := runDebug(t, a, a.PinPath)
	if err != nil {
		t.Fatalf("debug: %v\n%s%s", err, out, stderr)
	}
	_, cidrs, _ := strings.Cut(out, "Non-masquerade CIDRs")
	cidrs, _, _ = strings.Cut(cidrs, "\n\n")
	res := map[string]string{}
	for _, line := range strings.Split(cidrs, "\n")[1:] {
		if f := strings.Fields(line); len(f) >= 2 {
			res[f[0]] = f[1] // "configured" or "link-local"
		}
	}
	return res
}

// TestIPv6LinkLocalConfig: masqLinkLocalIPv6 both ways, as far as an end to
// end test can take it. fe80::/10 destinations are never routed: a pod's
// link-local packets stay on its own link and never reach the node's uplink,
// so no traffic of this topology can show the difference (the program tests
// TestIPv6Masquerade and TestIPv6NotMasqueraded in test/prog show it on
// crafted packets). What is checked here is the agent's side: fe80::/10 is
// in the active IPv6 non-masquerade set with masqLinkLocalIPv6 false, leaves
// it when the file says true, comes back when it says false again, each
// within ConfigEffectTimeout and without disturbing the other decisions.
func TestIPv6LinkLocalConfig(t *testing.T) {
	forEachMode(t, func(t *testing.T, mode string) {
		tp, a := startAgent6(t, mode)
		ds := tp.V6
		want := func(t *testing.T, linkLocal bool) {
			t.Helper()
			err := eventually(ConfigEffectTimeout, func() error {
				set := debugPrefixes(t, a)
				if set["fd00::/8"] != "configured" || set["10.0.0.0/8"] != "configured" {
					return fmt.Errorf("active set %v lacks the configured fd00::/8 or 10.0.0.0/8", set)
				}
				if _, ok := set["fe80::/10"]; ok != linkLocal {
					return fmt.Errorf("active set %v: fe80::/10 present %v, want %v", set, ok, linkLocal)
				}
				if _, ok := set["169.254.0.0/16"]; !ok {
					return fmt.Errorf("active set %v: 169.254.0.0/16 missing (masqLinkLocal is false)", set)
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
		}
		want(t, true)
		off := a.LogOffset()
		WriteConfigRename(t, a.ConfigPath, cfg6MasqLinkLocalIPv6)
		if err := a.WaitLog(LogApplied, off, ConfigEffectTimeout); err != nil {
			t.Fatal(err)
		}
		want(t, false)
		expectTCP(t, ds.Pod1, ds.Internet, Node6)
		expectTCP(t, ds.Pod1, ds.VPC, Pod1IP6)
		WriteConfigRename(t, a.ConfigPath, cfg6)
		want(t, true)
		expectUDP(t, ds.Pod1, ds.Internet, Node6)
		expectUDP(t, ds.Pod1, ds.VPC, Pod1IP6)
	})
}

// TestIPv6Fragments: large UDP datagrams both ways through the NAT over
// IPv6, where only the source fragments (the pods' 30 kB requests, the
// server's 30 kB answers): every fragment is translated, the server sees the
// node's address, the pod gets the whole answer; two pods on one port keep
// apart; non-masqueraded fragments to the VPC keep the pod's address; a
// fragmented ping -6 is answered.
func TestIPv6Fragments(t *testing.T) {
	forEachMode(t, func(t *testing.T, mode string) {
		tp, a := startAgent6(t, mode)
		ds := tp.V6
		inet := netip.AddrPortFrom(Internet6, BigUDPPort)
		vpc := netip.AddrPortFrom(VPC6, BigUDPPort)
		listenBigUDP(t, ds.Internet.Netns, inet)
		listenBigUDP(t, ds.VPC.Netns, vpc)
		before := readStats6(t, a)

		for _, tc := range []struct{ req, resp int }{{30000, 30000}, {200, 30000}, {30000, 200}} {
			peer, err := bigUDPExchange(ds.Pod1, inet, 0, tc.req, tc.resp, ProbeTimeout)
			if err != nil {
				t.Errorf("%d bytes out, %d back: %v", tc.req, tc.resp, err)
			} else if peer.Addr() != Node6 {
				t.Errorf("%d bytes out, %d back: server saw %s, want address %s", tc.req, tc.resp, peer, Node6)
			}
		}
		const port = 42000
		p1, err1 := bigUDPExchange(ds.Pod1, inet, port, 20000, 20000, ProbeTimeout)
		p2, err2 := bigUDPExchange(ds.Pod2, inet, port, 20000, 20000, ProbeTimeout)
		if err1 != nil || err2 != nil || p1.Addr() != Node6 || p2.Addr() != Node6 || p1 == p2 {
			t.Errorf("two pods from port %d: server saw %s (%v) and %s (%v), want two ports of %s", port, p1, err1, p2, err2, Node6)
		}
		if peer, err := bigUDPExchange(ds.Pod1, vpc, port+1, 30000, 30000, ProbeTimeout); err != nil || peer != netip.AddrPortFrom(Pod1IP6, port+1) {
			t.Errorf("to the VPC: server saw %s (%v), want %s", peer, err, netip.AddrPortFrom(Pod1IP6, port+1))
		}
		if out, err := tp.Pod2.Exec("ping", "-6", "-n", "-c", "2", "-i", "0.2", "-W", "2", "-s", "3000", Internet6.String()); err != nil {
			t.Errorf("pod2: ping -6 -s 3000 %s: %v\n%s", Internet6, err, out)
		}
		d := readStats6(t, a).delta(before)
		if d["egress_fragment"] == 0 || d["ingress_fragment"] == 0 || d["egress_frag_orphan"] != 0 {
			t.Errorf("IPv6 fragment counters: %v; want egress_fragment and ingress_fragment to grow, no orphan", d)
		}
		t.Logf("IPv6 datapath counters: %v", d)
	})
}

// TestIPv6RestartUnderTraffic: a 10 ms echo stream over IPv6 through the
// NAT and one that is not translated survive a stop (SIGTERM or SIGKILL), a
// time without any agent and a new start, without an error (a reset) and
// without a pause of a second or more.
func TestIPv6RestartUnderTraffic(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
		t.Run(sig.String(), func(t *testing.T) {
			forEachMode(t, func(t *testing.T, mode string) {
				tp, a := startAgent6(t, mode)
				ds := tp.V6
				masq, err := ds.Pod1.StartStream(ds.Internet.TCPAddr(), 10*time.Millisecond)
				if err != nil {
					t.Fatal(err)
				}
				defer masq.Stop()
				plain, err := ds.Pod1.StartStream(ds.VPC.TCPAddr(), 10*time.Millisecond)
				if err != nil {
					t.Fatal(err)
				}
				defer plain.Stop()
				time.Sleep(time.Second)
				if masq.Echoed() == 0 || plain.Echoed() == 0 {
					t.Fatalf("streams not flowing before the restart: %v; %v", masq.Stop(), plain.Stop())
				}

				a.Stop(t, sig)
				time.Sleep(AgentDownTime)
				expectTCP(t, ds.Pod1, ds.Internet, Node6)
				expectTCP(t, ds.Pod1, ds.VPC, Pod1IP6)
				a.Start(t)
				time.Sleep(time.Second)
				expectSource(t, ds.Pod1, ds.Internet, Node6)
				expectTCP(t, ds.Pod1, ds.VPC, Pod1IP6)

				for _, s := range []struct {
					name string
					res  StreamResult
					want netip.Addr
				}{{"masqueraded", masq.Stop(), Node6}, {"not masqueraded", plain.Stop(), Pod1IP6}} {
					t.Logf("%s IPv6 stream: %v", s.name, s.res)
					if s.res.Err != nil || s.res.MaxGap >= time.Second || s.res.Peer.Addr() != s.want {
						t.Errorf("%s IPv6 stream across %s + restart: %v; want no error, max gap < 1s, peer address %s",
							s.name, sig, s.res, s.want)
					}
				}
			})
		})
	}
}

// TestIPv6TurnedOnLater: without --enable-ipv6 the agent creates its IPv6
// state maps at a token size (loader.Options.SmallIPv6) and IPv6 passes
// untouched; restarted with the flag on the same pins, it replaces them at
// full size and masquerades IPv6, while IPv4 goes on.
func TestIPv6TurnedOnLater(t *testing.T) {
	forEachMode(t, func(t *testing.T, mode string) {
		requireAgent(t)
		tp := NewTopology(t, WithDualStack())
		a := StartAgent(t, tp, AgentOptions{Mode: mode, Config: cfg6})
		tp.FailOnChecksumErrors(t)
		failOnChecksumErrors6(t, tp)
		ds := tp.V6
		nat6Size := func() uint32 {
			t.Helper()
			m, err := ebpf.LoadPinnedMap(filepath.Join(a.PinPath, "ipm_nat6"), nil)
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			return m.MaxEntries()
		}
		// (The internet has no route back to pod addresses: IPv6 that
		// passes untouched is seen at the VPC host.)
		expectSource(t, ds.Pod1, ds.VPC, Pod1IP6)
		expectSource(t, tp.Pod1, tp.Internet, NodeIP)
		if n := nat6Size(); n > 1024 {
			t.Errorf("ipm_nat6 holds %d entries with IPv6 off, want a token size", n)
		}

		a.Stop(t, syscall.SIGTERM)
		a.Args = append(a.Args, "--enable-ipv6")
		a.Start(t)
		expectSource(t, ds.Pod1, ds.Internet, Node6)
		expectSource(t, tp.Pod1, tp.Internet, NodeIP)
		if n := nat6Size(); n <= 1024 {
			t.Errorf("ipm_nat6 holds %d entries with IPv6 on, want the full size", n)
		}
	})
}
