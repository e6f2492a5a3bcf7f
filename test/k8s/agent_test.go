package k8s

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/ipmasq-ebpf/ip-masq-agent/test/e2e"
)

// maxGap is the longest a TCP stream may go without an echo while the agent
// is replaced: the datapath stays attached and pinned while no agent runs
// (docs/behaviour.md, restarts and upgrades), so the stream should not
// notice at all; a second allows for a loaded machine.
const maxGap = time.Second

// patchDeadline is how soon an in-place ConfigMap change must decide new
// connections: the kubelet refreshes the projected volume on its pod sync
// (syncFrequency: 1s here) and the agent watches the directory.
const patchDeadline = 5 * time.Second

// TestDaemonSet runs the agent's life on a node in order, each step on what
// the one before left: install, masquerade, monitoring, config changes in place and by a
// new ConfigMap, a rolling upgrade, a deleted pod, the least-privilege
// component, uninstall. A failed step stops the rest.
func TestDaemonSet(t *testing.T) {
	c := newCluster(t)
	// Nothing of an earlier run on the cluster: its DaemonSets, and the
	// datapath, which outlives them by design.
	c.kubectl("-n", "kube-system", "delete", "ds", dsName, dsName+"-cleanup", "--ignore-not-found", "--wait=true")
	c.kubectl("-n", "kube-system", "wait", "--for=delete", "pod", "-l", "k8s-app in ("+dsName+","+dsName+"-cleanup)", "--timeout=120s")
	if left := c.pins(t); len(left) > 0 {
		t.Log("the datapath of an earlier run is there: uninstalling it first")
		c.apply(t, overlay{tag: "k8s-a", uninstall: true})
		c.mustKubectl(t, "-n", "kube-system", "delete", "ds", dsName+"-cleanup", "--wait=true")
	}
	p := c.newPod(t, fmt.Sprintf("probe-%d", time.Now().Unix()%100000))
	t.Cleanup(func() {
		if t.Failed() {
			c.describe(t)
		}
		c.kubectl("-n", "kube-system", "delete", "ds", dsName+"-cleanup", "--ignore-not-found")
	})

	var first string // the agent pod that the install started
	steps := []struct {
		name string
		fn   func(t *testing.T)
	}{
		{"Install", func(t *testing.T) {
			// Without the agent the internet drops the pod's packets: the
			// checks below can fail.
			if peer, err := p.ns.TCPPeer(c.internet.TCPAddr(), 0, e2e.ProbeTimeout); err == nil {
				t.Fatalf("without the agent the internet host answered the pod (saw %s)", peer)
			}
			d := c.apply(t, overlay{tag: "k8s-a", config: configVPC})
			first, _ = c.agentPod(t)
			// What the kubelet's probes ask, asked from the node too.
			for _, path := range []string{"/healthz", "/readyz"} {
				if code, body := c.nodeGet(t, "http://127.0.0.1:9442"+path); code != http.StatusOK {
					t.Errorf("%s: %d %s", path, code, body)
				}
			}
			t.Logf("DaemonSet Ready %v after kubectl apply -k (readiness probe /readyz passed)", d.Round(100*time.Millisecond))
		}},
		{"Masquerade", func(t *testing.T) {
			expectSources(t, p, c.internet, e2e.NodeIP)
			expectSources(t, p, c.vpc, p.ip)
		}},
		// deploy/monitoring on what the two steps above did: a real
		// Prometheus scrapes the agent, loads its alerts, fills the dashboard.
		{"Monitoring", c.checkMonitoring},
		{"ConfigMapPatchedInPlace", func(t *testing.T) {
			c.patchedInPlace(t, p)
			// The pod of the install still runs, never restarted: its liveness
			// probe (/healthz) passed all along.
			if now, _ := c.agentPod(t); now != first {
				t.Errorf("agent pod %s replaced by %s by an in-place ConfigMap change", first, now)
			}
			if r := c.restarts(t, first); r != "0" {
				t.Errorf("agent pod %s restarted %s times", first, r)
			}
		}},
		{"NewConfigRollsDaemonSet", func(t *testing.T) {
			oldCM, oldPod := c.configMap(t), first
			c.apply(t, overlay{tag: "k8s-a", config: configAll})
			if cm := c.configMap(t); cm == oldCM {
				t.Fatalf("a changed config.yml kept the ConfigMap name %s", cm)
			}
			if now, _ := c.agentPod(t); now == oldPod {
				t.Fatalf("a new ConfigMap did not replace agent pod %s", oldPod)
			}
			// The new config: the VPC sees the node now.
			expectSources(t, p, c.vpc, e2e.NodeIP)
		}},
		{"RollingUpgrade", func(t *testing.T) {
			underStream(t, p, c.internet, func() {
				c.apply(t, overlay{tag: "k8s-b", config: configAll})
			})
			if _, image := c.agentPod(t); !strings.HasSuffix(image, ":k8s-b") {
				t.Fatalf("agent image %s after the upgrade, want the k8s-b build", image)
			}
			expectSources(t, p, c.internet, e2e.NodeIP)
		}},
		{"AgentPodDeleted", func(t *testing.T) {
			old, _ := c.agentPod(t)
			underStream(t, p, c.internet, func() {
				c.mustKubectl(t, "-n", "kube-system", "delete", "pod", old, "--wait=true")
				c.rollout(t, dsName)
				waitNewAgent(t, c, old)
			})
			expectSources(t, p, c.internet, e2e.NodeIP)
		}},
		{"LeastPrivilege", func(t *testing.T) {
			underStream(t, p, c.internet, func() {
				c.apply(t, overlay{tag: "k8s-a", config: configVPC, leastPrivilege: true})
			})
			name, _ := c.agentPod(t)
			priv := c.mustKubectl(t, "-n", "kube-system", "get", "pod", name, "-o", "jsonpath={.spec.containers[0].securityContext.privileged}")
			if priv != "false" {
				t.Fatalf("agent pod %s privileged=%q, want the least-privilege component", name, priv)
			}
			expectSources(t, p, c.internet, e2e.NodeIP)
			expectSources(t, p, c.vpc, p.ip)
			c.patchedInPlace(t, p)
		}},
		{"Uninstall", func(t *testing.T) {
			c.mustKubectl(t, "-n", "kube-system", "delete", "ds", dsName, "--wait=true")
			c.mustKubectl(t, "-n", "kube-system", "wait", "--for=delete", "pod", "-l", "k8s-app="+dsName, "--timeout=120s")
			// Without the agent the datapath stays: pinned and masquerading.
			if out, err := c.inNode("ls", "/sys/fs/bpf/ip-masq-agent"); err != nil || out == "" {
				t.Fatalf("pins gone with the agent's DaemonSet: %q %v", out, err)
			}
			expectSources(t, p, c.internet, e2e.NodeIP)

			c.apply(t, overlay{tag: "k8s-a", uninstall: true})
			if left := c.pins(t); len(left) > 0 {
				t.Errorf("bpffs after the uninstall DaemonSet: %q, want nothing pinned", left)
			}
			for _, cmd := range [][]string{
				{"bpftool", "net", "show", "dev", "eth0"},
				{"tc", "filter", "show", "dev", "eth0", "ingress"},
				{"tc", "filter", "show", "dev", "eth0", "egress"},
			} {
				out, err := c.inNode(cmd...)
				if err != nil {
					t.Fatal(err)
				}
				if strings.Contains(out, "ipm_") || strings.Contains(out, "bpf") {
					t.Errorf("%s after the uninstall DaemonSet:\n%s", strings.Join(cmd, " "), out)
				}
			}
			// Nothing masquerades any more: the internet drops the pod again.
			if peer, err := p.ns.TCPPeer(c.internet.TCPAddr(), 0, e2e.ProbeTimeout); err == nil {
				t.Errorf("after the uninstall the internet host still answered the pod (saw %s)", peer)
			}
			c.mustKubectl(t, "-n", "kube-system", "delete", "ds", dsName+"-cleanup", "--wait=true")
		}},
	}
	for _, s := range steps {
		if !t.Run(s.name, s.fn) {
			return
		}
	}
}

// patchedInPlace changes the mounted ConfigMap in place, as `kubectl edit`
// does (docs/behaviour.md: a config change applies to new connections), and
// expects new connections to the VPC to follow within patchDeadline each way.
func (c *cluster) patchedInPlace(t *testing.T, p *pod) {
	t.Helper()
	cm := c.configMap(t)
	for _, step := range []struct {
		config string
		want   netip.Addr
	}{{configAll, e2e.NodeIP}, {configVPC, p.ip}} {
		patch, _ := json.Marshal(map[string]any{"data": map[string]string{"config": step.config}})
		c.mustKubectl(t, "-n", "kube-system", "patch", "configmap", cm, "--type=merge", "-p", string(patch))
		took, ok := waitFor(patchDeadline, func() bool {
			peer, err := p.ns.TCPPeer(c.vpc.TCPAddr(), 0, e2e.ProbeTimeout)
			return err == nil && peer.Addr() == step.want
		})
		if !ok {
			t.Fatalf("ConfigMap %s patched: the VPC did not see %s within %v", cm, step.want, patchDeadline)
		}
		t.Logf("ConfigMap patch in effect after %v (VPC sees %s)", took.Round(100*time.Millisecond), step.want)
		expectSources(t, p, c.vpc, step.want)
	}
}

// underStream runs change while a TCP stream from the pod to h sends a
// message every 10 ms, and fails on a reset or a gap over maxGap.
func underStream(t *testing.T, p *pod, h *e2e.Host, change func()) {
	t.Helper()
	s, err := p.ns.StartStream(h.TCPAddr(), 10*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Stop()
	if _, ok := waitFor(5*time.Second, func() bool { return s.Echoed() > 10 }); !ok {
		t.Fatalf("stream: no echoes: %v", s.Err())
	}
	change()
	// A while on the new agent too: a gap right after the switch counts.
	time.Sleep(2 * time.Second)
	res := s.Stop()
	t.Logf("stream across the change: %v", res)
	if res.Err != nil {
		t.Errorf("stream broke: %v", res.Err)
	}
	if res.MaxGap > maxGap {
		t.Errorf("stream went %v without an echo, want at most %v", res.MaxGap, maxGap)
	}
	if res.Peer.Addr() != e2e.NodeIP {
		t.Errorf("stream seen from %s, want the node %s", res.Peer, e2e.NodeIP)
	}
}

// waitNewAgent waits until a Ready agent pod other than old runs.
func waitNewAgent(t *testing.T, c *cluster, old string) {
	t.Helper()
	_, ok := waitFor(120*time.Second, func() bool {
		out, err := c.kubectl("-n", "kube-system", "get", "pods", "-l", "k8s-app="+dsName,
			"-o", `jsonpath={range .items[*]}{.metadata.name}={.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}`)
		return err == nil && !strings.Contains(out, old) && strings.Contains(out, "=True")
	})
	if !ok {
		t.Fatalf("no new Ready agent pod after deleting %s", old)
	}
}

// pins lists what is pinned on the node's bpffs (/sys/fs/bpf, which the
// agent's pod mounts), without the kernel's own maps.debug and progs.debug.
func (c *cluster) pins(t *testing.T) []string {
	t.Helper()
	out, err := c.inNode("ls", "-A", "/sys/fs/bpf")
	if err != nil {
		t.Fatal(err)
	}
	var pins []string
	for _, f := range strings.Fields(out) {
		if !strings.HasSuffix(f, ".debug") {
			pins = append(pins, f)
		}
	}
	return pins
}

// nodeGet fetches url from the node's network namespace, where the agent's
// health endpoints listen on 127.0.0.1.
func (c *cluster) nodeGet(t *testing.T, url string) (int, string) {
	t.Helper()
	h, err := netns.GetFromPath("/proc/" + c.env["IPM_K8S_HOLDER_PID"] + "/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	node := &e2e.Netns{Name: c.env["IPM_K8S_NODE_NETNS"], Role: "node", Handle: h}
	var conn net.Conn
	if err := node.Do(func() (err error) {
		conn, err = net.DialTimeout("tcp", "127.0.0.1:9442", e2e.ProbeTimeout)
		return err
	}); err != nil {
		t.Fatalf("node: %v", err)
	}
	// The connection was made in the node; the request goes over it.
	client := &http.Client{Timeout: e2e.ProbeTimeout, Transport: &http.Transport{
		DialContext: func(context.Context, string, string) (net.Conn, error) { return conn, nil },
	}}
	resp, err := client.Get(url)
	if err != nil {
		t.Fatalf("GET %s in the node: %v", url, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, strings.TrimSpace(string(body))
}
