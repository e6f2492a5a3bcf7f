package e2e

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Configuration files used by the tests (the ConfigMap's `config` key).
const (
	cfgPrivate       = "nonMasqueradeCIDRs:\n  - 10.0.0.0/8\n"
	cfgMasqLinkLocal = "nonMasqueradeCIDRs:\n  - 10.0.0.0/8\nmasqLinkLocal: true\n"
	cfgMasqAll       = "nonMasqueradeCIDRs: []\n"
	cfgInvalid       = "nonMasqueradeCIDRs:\n  - 10.0.0.1/8\n" // not aligned: rejected
)

// ConfigEffectTimeout is how soon a config change must apply to new flows.
const ConfigEffectTimeout = 5 * time.Second

// forEachMode runs f as a parallel subtest for every attach mode; each
// subtest builds its own topology.
func forEachMode(t *testing.T, f func(t *testing.T, mode string)) {
	requireRoot(t)
	t.Parallel()
	for _, mode := range AttachModes {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			f(t, mode)
		})
	}
}

// startAgent builds a topology and starts the agent with the config content.
// At the end of the test, a checksum error counted by any receiver fails it.
func startAgent(t *testing.T, opts AgentOptions) (*Topology, *Agent) {
	t.Helper()
	requireAgent(t)
	tp := NewTopology(t)
	a := StartAgent(t, tp, opts)
	tp.FailOnChecksumErrors(t) // runs before the agent's cleanup prints its logs
	return tp, a
}

// waitSeen opens new TCP connections from -> to until the server sees the
// address want, for at most timeout; it returns how long that took.
func waitSeen(from *Netns, to *Host, want netip.Addr, timeout time.Duration) (time.Duration, error) {
	start := time.Now()
	err := eventually(timeout, func() error {
		_, seen, err := tcpSeen(from, to, 0, time.Second)
		if err != nil {
			return err
		}
		if seen.Addr() != want {
			return fmt.Errorf("server saw %s, want address %s", seen, want)
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("TCP %s -> %s: not in effect after %v: %w", from, to, timeout, err)
	}
	return time.Since(start), nil
}

// TestMasquerade: with the usual private list, traffic to the internet is
// masqueraded and traffic to the VPC and to link-local is not.
func TestMasquerade(t *testing.T) {
	forEachMode(t, func(t *testing.T, mode string) {
		tp, _ := startAgent(t, AgentOptions{Mode: mode, Config: cfgPrivate})
		expectSource(t, tp.Pod1, tp.Internet, NodeIP)
		expectSource(t, tp.Pod2, tp.Internet, NodeIP)
		expectSource(t, tp.Pod1, tp.VPC, Pod1IP)
		expectSource(t, tp.Pod2, tp.VPC, Pod2IP)
		expectSource(t, tp.Pod1, tp.LinkLocal, Pod1IP)
	})
}

// TestMasqLinkLocal: masqLinkLocal: true masquerades 169.254.0.0/16 too.
func TestMasqLinkLocal(t *testing.T) {
	forEachMode(t, func(t *testing.T, mode string) {
		tp, _ := startAgent(t, AgentOptions{Mode: mode, Config: cfgMasqLinkLocal})
		expectSource(t, tp.Pod1, tp.LinkLocal, NodeIP)
		expectSource(t, tp.Pod1, tp.VPC, Pod1IP)
		expectSource(t, tp.Pod1, tp.Internet, NodeIP)
	})
}

// TestEmptyNonMasqueradeCIDRs: an empty list masquerades everything except
// link-local.
func TestEmptyNonMasqueradeCIDRs(t *testing.T) {
	forEachMode(t, func(t *testing.T, mode string) {
		tp, _ := startAgent(t, AgentOptions{Mode: mode, Config: cfgMasqAll})
		expectSource(t, tp.Pod1, tp.VPC, NodeIP)
		expectSource(t, tp.Pod1, tp.Internet, NodeIP)
		expectSource(t, tp.Pod1, tp.LinkLocal, Pod1IP)
	})
}

// TestConfigChange: a change of the file applies to new flows within
// ConfigEffectTimeout, however the file is replaced; established flows keep
// what they had.
func TestConfigChange(t *testing.T) {
	type writer struct {
		name  string
		setup func(t *testing.T, content string) (path string, write func(t *testing.T, content string))
	}
	plainFile := func(write func(testing.TB, string, string)) func(*testing.T, string) (string, func(*testing.T, string)) {
		return func(t *testing.T, content string) (string, func(*testing.T, string)) {
			path := filepath.Join(t.TempDir(), "ip-masq-agent")
			if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
				t.Fatal(err)
			}
			return path, func(t *testing.T, content string) { write(t, path, content) }
		}
	}
	writers := []writer{
		{"rename", plainFile(WriteConfigRename)},
		{"in place", plainFile(WriteConfigInPlace)},
		{"configmap symlink swap", func(t *testing.T, content string) (string, func(*testing.T, string)) {
			c := NewConfigMapDir(t, content)
			return c.Path(), func(t *testing.T, content string) { c.Update(t, content) }
		}},
	}
	forEachMode(t, func(t *testing.T, mode string) {
		for _, w := range writers {
			t.Run(w.name, func(t *testing.T) {
				t.Parallel()
				requireAgent(t)
				path, write := w.setup(t, cfgPrivate)
				tp, a := startAgent(t, AgentOptions{Mode: mode, ConfigPath: path})
				expectTCP(t, tp.Pod1, tp.VPC, Pod1IP)
				// An established flow that is not masqueraded.
				plain, err := tp.Pod1.DialTCP(tp.VPC.TCPAddr(), 0, ProbeTimeout)
				if err != nil {
					t.Fatal(err)
				}
				defer plain.Close()

				off := a.LogOffset()
				write(t, cfgMasqAll)
				took, err := waitSeen(tp.Pod1, tp.VPC, NodeIP, ConfigEffectTimeout)
				if err != nil {
					t.Fatalf("nonMasqueradeCIDRs [10.0.0.0/8] -> []: %v", err)
				}
				t.Logf("nonMasqueradeCIDRs [10.0.0.0/8] -> []: in effect after %v", took)
				if err := a.WaitLog(LogApplied, off, ConfigEffectTimeout); err != nil {
					t.Error(err)
				}
				expectUDP(t, tp.Pod1, tp.VPC, NodeIP)
				expectPing(t, tp.Pod1, tp.VPC, NodeIP)
				expectTCP(t, tp.Pod1, tp.Internet, NodeIP)
				if err := plain.Echo([]byte("still plain\n"), ProbeTimeout); err != nil {
					t.Errorf("established unmasqueraded TCP flow after the change: %v", err)
				}
				// An established flow that is masqueraded.
				masq, err := tp.Pod1.DialTCP(tp.VPC.TCPAddr(), 0, ProbeTimeout)
				if err != nil {
					t.Fatal(err)
				}
				defer masq.Close()

				off = a.LogOffset()
				write(t, cfgPrivate)
				took, err = waitSeen(tp.Pod1, tp.VPC, Pod1IP, ConfigEffectTimeout)
				if err != nil {
					t.Fatalf("nonMasqueradeCIDRs [] -> [10.0.0.0/8]: %v", err)
				}
				t.Logf("nonMasqueradeCIDRs [] -> [10.0.0.0/8]: in effect after %v", took)
				if err := a.WaitLog(LogApplied, off, ConfigEffectTimeout); err != nil {
					t.Error(err)
				}
				expectUDP(t, tp.Pod1, tp.VPC, Pod1IP)
				expectPing(t, tp.Pod1, tp.VPC, Pod1IP)
				expectTCP(t, tp.Pod1, tp.Internet, NodeIP)
				for _, c := range []*TCPConn{plain, masq} {
					if err := c.Echo([]byte("after two changes\n"), ProbeTimeout); err != nil {
						t.Errorf("established TCP flow (server sees %s) after the second change: %v", c.Peer, err)
					}
				}
			})
		}
	})
}

// TestInvalidConfig: a rejected file leaves the last good config in force
// and the agent running; the next good file applies.
func TestInvalidConfig(t *testing.T) {
	forEachMode(t, func(t *testing.T, mode string) {
		// [] differs from the built-in defaults, so falling back to the
		// defaults would show as well as flushing the datapath would.
		tp, a := startAgent(t, AgentOptions{Mode: mode, Config: cfgMasqAll})
		expectTCP(t, tp.Pod1, tp.VPC, NodeIP)

		off := a.LogOffset()
		WriteConfigRename(t, a.ConfigPath, cfgInvalid)
		if err := a.WaitLog(LogRejected, off, ConfigEffectTimeout); err != nil {
			t.Fatal(err)
		}
		if logs := a.Logs()[off:]; !strings.Contains(logs, "10.0.0.1/8") {
			t.Errorf("the rejection does not name the bad CIDR 10.0.0.1/8:\n%s", logs)
		}
		// Give a wrong apply time to happen, then check the old config.
		time.Sleep(time.Second)
		for i := 0; i < 3; i++ {
			expectSource(t, tp.Pod1, tp.VPC, NodeIP)
			expectTCP(t, tp.Pod1, tp.Internet, NodeIP)
			expectTCP(t, tp.Pod1, tp.LinkLocal, Pod1IP)
			time.Sleep(300 * time.Millisecond)
		}
		if !a.Running() {
			t.Fatal("agent exited after an invalid config")
		}

		WriteConfigRename(t, a.ConfigPath, cfgPrivate)
		if _, err := waitSeen(tp.Pod1, tp.VPC, Pod1IP, ConfigEffectTimeout); err != nil {
			t.Errorf("a good config after an invalid one: %v", err)
		}
		expectSource(t, tp.Pod1, tp.Internet, NodeIP)
	})
}

// TestInvalidConfigAtStart: an agent that starts with a rejected file runs
// with the defaults (10/8, 172.16/12, 192.168/16 not masqueraded).
func TestInvalidConfigAtStart(t *testing.T) {
	forEachMode(t, func(t *testing.T, mode string) {
		tp, a := startAgent(t, AgentOptions{Mode: mode, Config: cfgInvalid})
		if err := a.WaitLog(LogRejected, 0, ConfigEffectTimeout); err != nil {
			t.Error(err)
		}
		expectSource(t, tp.Pod1, tp.VPC, Pod1IP)
		expectSource(t, tp.Pod1, tp.Internet, NodeIP)
		if !a.Running() {
			t.Error("agent exited after an invalid config at start")
		}
	})
}

// TestSameSourcePort: two pods using the same source port towards the same
// destination at the same time both work, through different node ports.
func TestSameSourcePort(t *testing.T) {
	forEachMode(t, func(t *testing.T, mode string) {
		tp, _ := startAgent(t, AgentOptions{Mode: mode, Config: cfgPrivate})

		t.Run("tcp", func(t *testing.T) {
			const port = 40000
			c1, err := tp.Pod1.DialTCP(tp.Internet.TCPAddr(), port, ProbeTimeout)
			if err != nil {
				t.Fatal(err)
			}
			defer c1.Close()
			c2, err := tp.Pod2.DialTCP(tp.Internet.TCPAddr(), port, ProbeTimeout)
			if err != nil {
				t.Fatal(err)
			}
			defer c2.Close()
			if c1.Peer.Addr() != NodeIP || c2.Peer.Addr() != NodeIP || c1.Peer == c2.Peer {
				t.Errorf("server saw %s and %s, want two different ports of %s", c1.Peer, c2.Peer, NodeIP)
			}
			for i, c := range []*TCPConn{c1, c2, c1, c2} {
				if err := c.Echo([]byte(fmt.Sprintf("pod%d\n", i%2+1)), ProbeTimeout); err != nil {
					t.Errorf("pod%d: %v", i%2+1, err)
				}
			}
		})

		t.Run("udp", func(t *testing.T) {
			const port = 40001
			seen := map[*Netns]netip.AddrPort{}
			for i := 0; i < 2; i++ { // the second round reuses both mappings
				for _, pod := range []*Netns{tp.Pod1, tp.Pod2} {
					rep, err := pod.UDPPeer(tp.Internet.UDPAddr(), port, ProbeTimeout)
					if err != nil {
						t.Error(err)
						continue
					}
					if rep.Peer.Addr() != NodeIP {
						t.Errorf("UDP %s -> internet: server saw %s, want address %s", pod, rep.Peer, NodeIP)
					}
					if prev, ok := seen[pod]; ok && prev != rep.Peer {
						t.Errorf("UDP %s -> internet: mapping changed from %s to %s", pod, prev, rep.Peer)
					}
					seen[pod] = rep.Peer
				}
			}
			if seen[tp.Pod1] == seen[tp.Pod2] {
				t.Errorf("UDP: both pods seen as %s", seen[tp.Pod1])
			}
		})

		t.Run("icmp", func(t *testing.T) {
			const id = 0x4242
			var wg sync.WaitGroup
			for _, pod := range []*Netns{tp.Pod1, tp.Pod2} {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := 0; i < 5; i++ {
						if src, err := tp.Internet.PingSource(pod, id, ProbeTimeout); err != nil || src != NodeIP {
							t.Errorf("ping %s -> internet with id %#x: source %s, %v", pod, id, src, err)
						}
					}
				}()
			}
			wg.Wait()
		})
	})
}

// TestHostTraffic: the node's own traffic keeps its address and its port.
func TestHostTraffic(t *testing.T) {
	forEachMode(t, func(t *testing.T, mode string) {
		tp, _ := startAgent(t, AgentOptions{Mode: mode, Config: cfgPrivate})
		expectSource(t, tp.Node, tp.Internet, NodeIP) // ports checked unchanged
		expectSource(t, tp.Node, tp.VPC, NodeIP)
		if _, seen, err := tcpSeen(tp.Node, tp.Internet, 45000, ProbeTimeout); err != nil || seen != netip.AddrPortFrom(NodeIP, 45000) {
			t.Errorf("TCP node:45000 -> internet: server saw %s (%v), want %s:45000", seen, err, NodeIP)
		}
		if rep, err := tp.Node.UDPPeer(tp.Internet.UDPAddr(), 45001, ProbeTimeout); err != nil || rep.Peer != netip.AddrPortFrom(NodeIP, 45001) {
			t.Errorf("UDP node:45001 -> internet: server saw %s (%v), want %s:45001", rep.Peer, err, NodeIP)
		}
	})
}

// TestHostPortCollision: a pod mapping never takes a tuple that a host
// connection uses and never hijacks one, in both orders (docs/behaviour.md §8). With
// --random-fully=false the agent wants to keep the pod's port, so the
// collision is certain.
func TestHostPortCollision(t *testing.T) {
	forEachMode(t, func(t *testing.T, mode string) {
		tp, _ := startAgent(t, AgentOptions{Mode: mode, Config: cfgPrivate, ExtraArgs: []string{"--random-fully=false"}})
		dst := tp.Internet.TCPAddr()
		both := func(t *testing.T, host, pod *TCPConn) {
			t.Helper()
			if host.Peer.Addr() != NodeIP || pod.Peer.Addr() != NodeIP || host.Peer == pod.Peer {
				t.Errorf("server saw host %s and pod %s, want two different ports of %s", host.Peer, pod.Peer, NodeIP)
			}
			for _, c := range []*TCPConn{host, pod, host, pod} {
				if err := c.Echo([]byte("mine\n"), ProbeTimeout); err != nil {
					t.Error(err)
				}
			}
		}

		t.Run("host first", func(t *testing.T) {
			host, err := tp.Node.DialTCP(dst, 46000, ProbeTimeout)
			if err != nil {
				t.Fatal(err)
			}
			defer host.Close()
			if host.Peer != netip.AddrPortFrom(NodeIP, 46000) {
				t.Errorf("host connection seen as %s, want %s:46000", host.Peer, NodeIP)
			}
			pod, err := tp.Pod1.DialTCP(dst, 46000, ProbeTimeout)
			if err != nil {
				t.Fatal(err)
			}
			defer pod.Close()
			both(t, host, pod)
		})

		t.Run("pod first", func(t *testing.T) {
			pod, err := tp.Pod1.DialTCP(dst, 46100, ProbeTimeout)
			if err != nil {
				t.Fatal(err)
			}
			defer pod.Close()
			// The host now opens the very tuple the pod's mapping holds.
			host, err := tp.Node.DialTCP(dst, pod.Peer.Port(), ProbeTimeout)
			if err != nil {
				t.Fatalf("host connection from the pod mapping's port %d: %v", pod.Peer.Port(), err)
			}
			defer host.Close()
			both(t, host, pod)
		})
	})
}

// AgentDownTime is how long TestRestartUnderTraffic leaves the node without
// an agent: longer than the 1 s gap budget, so a datapath that went away with
// the process cannot hide behind TCP retransmissions.
const AgentDownTime = 1500 * time.Millisecond

// TestRestartUnderTraffic: a 10 ms echo stream through the NAT and one that
// is not translated survive a stop (SIGTERM or SIGKILL), a time without any
// agent and a new start, without an error and without a pause of a second or
// more.
func TestRestartUnderTraffic(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
		t.Run(sig.String(), func(t *testing.T) {
			forEachMode(t, func(t *testing.T, mode string) {
				tp, a := startAgent(t, AgentOptions{Mode: mode, Config: cfgPrivate})
				masq, err := tp.Pod1.StartStream(tp.Internet.TCPAddr(), 10*time.Millisecond)
				if err != nil {
					t.Fatal(err)
				}
				defer masq.Stop()
				plain, err := tp.Pod1.StartStream(tp.VPC.TCPAddr(), 10*time.Millisecond)
				if err != nil {
					t.Fatal(err)
				}
				defer plain.Stop()
				time.Sleep(time.Second)
				if masq.Echoed() == 0 || plain.Echoed() == 0 {
					t.Fatalf("streams not flowing before the restart: %v; %v", masq.Stop(), plain.Stop())
				}

				a.Stop(t, sig)
				// The datapath stays attached and in force while no agent runs.
				time.Sleep(AgentDownTime)
				expectTCP(t, tp.Pod1, tp.Internet, NodeIP)
				expectTCP(t, tp.Pod1, tp.VPC, Pod1IP)
				a.Start(t)
				time.Sleep(time.Second)
				expectSource(t, tp.Pod1, tp.Internet, NodeIP)
				expectTCP(t, tp.Pod1, tp.VPC, Pod1IP)

				for _, s := range []struct {
					name string
					res  StreamResult
					want netip.Addr
				}{{"masqueraded", masq.Stop(), NodeIP}, {"not masqueraded", plain.Stop(), Pod1IP}} {
					t.Logf("%s stream: %v", s.name, s.res)
					if s.res.Err != nil || s.res.MaxGap >= time.Second || s.res.Peer.Addr() != s.want {
						t.Errorf("%s stream across %v + restart: %v; want no error, max gap < 1s, peer address %s",
							s.name, sig, s.res, s.want)
					}
				}
			})
		})
	}
}

// TestRestartAcrossBuilds: an agent restarted with the other build of the
// datapath (an upgrade to a kernel-aware agent, or pinning the portable one)
// takes over the same pinned state under traffic without a pause, both ways.
func TestRestartAcrossBuilds(t *testing.T) {
	forEachMode(t, func(t *testing.T, mode string) {
		tp, a := startAgent(t, AgentOptions{Mode: mode, Config: cfgPrivate})
		if !strings.Contains(a.Logs(), `build="kern-ctx"`) {
			// Before 6.2 (or without BTF) there is only the helpers
			// build: nothing to switch between.
			t.Skipf("this kernel loads only the helpers build: %s", lastLine(a.Logs(), "Datapath ready"))
		}
		masq, err := tp.Pod1.StartStream(tp.Internet.TCPAddr(), 10*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		defer masq.Stop()
		time.Sleep(500 * time.Millisecond)
		for _, b := range []string{"helpers", "kern-ctx"} {
			a.Stop(t, syscall.SIGTERM)
			a.Env = []string{"IPM_DATAPATH_VARIANT=" + b}
			from := len(a.Logs())
			a.Start(t)
			if err := a.WaitLog(`build="`+b+`"`, from, 5*time.Second); err != nil {
				t.Fatalf("restart with the %s build: %v", b, err)
			}
			time.Sleep(500 * time.Millisecond)
		}
		res := masq.Stop()
		t.Logf("stream: %v", res)
		if res.Err != nil || res.MaxGap >= time.Second || res.Peer.Addr() != NodeIP {
			t.Errorf("stream across two build switches: %v; want no error, max gap < 1s, peer %s", res, NodeIP)
		}
	})
}

// lastLine returns the last line of logs that contains substr.
func lastLine(logs, substr string) string {
	lines := strings.Split(logs, "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if strings.Contains(lines[i], substr) {
			return lines[i]
		}
	}
	return ""
}
