// Package k8s tests the agent as users run it: a DaemonSet that a real
// kubelet starts and feeds its ConfigMap through a projected volume, on the
// one-node cluster of cluster.sh, with real pods behind a CNI bridge.
// `make test-k8s` builds the cluster, runs these tests and removes it; they
// skip without the cluster (IPM_K8S_STATE unset).
package k8s

import (
	"bufio"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/ipmasq-ebpf/ip-masq-agent/test/e2e"
)

// cluster is what cluster.sh wrote into $IPM_K8S_STATE/env. cluster.sh gives
// the node and the internet and VPC hosts the addresses of test/e2e's
// topology (e2e.NodeIP, e2e.InternetIP, e2e.VPCIP), whose servers run there.
type cluster struct {
	env      map[string]string
	repo     string
	internet *e2e.Host
	vpc      *e2e.Host
}

// newCluster reads the cluster's env file, or skips the test without one.
// The internet and VPC hosts get the servers of test/e2e (t.Cleanup stops them).
func newCluster(t *testing.T) *cluster {
	t.Helper()
	state := os.Getenv("IPM_K8S_STATE")
	if state == "" {
		t.Skip("no test cluster: run `make test-k8s` (or test/k8s/cluster.sh up and set IPM_K8S_STATE)")
	}
	if os.Geteuid() != 0 {
		t.Fatal("the cluster tests need root (namespaces of the cluster, its containerd)")
	}
	f, err := os.Open(filepath.Join(state, "env"))
	if err != nil {
		t.Fatalf("cluster env: %v", err)
	}
	defer f.Close()
	c := &cluster{env: map[string]string{}}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), "="); ok {
			c.env[k] = v
		}
	}
	_, file, _, _ := runtime.Caller(0)
	c.repo = filepath.Join(filepath.Dir(file), "..", "..")
	c.internet = c.host(t, c.env["IPM_K8S_INTERNET_NETNS"], "internet", e2e.InternetIP)
	c.vpc = c.host(t, c.env["IPM_K8S_VPC_NETNS"], "vpc", e2e.VPCIP)
	return c
}

// host opens one of cluster.sh's remote namespaces and starts the TCP, UDP
// and ICMP servers of test/e2e in it.
func (c *cluster) host(t *testing.T, name, role string, addr netip.Addr) *e2e.Host {
	t.Helper()
	h, err := netns.GetFromName(name)
	if err != nil {
		t.Fatalf("netns %s: %v", name, err)
	}
	t.Cleanup(func() { h.Close() })
	n := &e2e.Netns{Name: name, Role: role, Handle: h, Addr: addr}
	return &e2e.Host{
		Netns: n,
		TCP:   n.ListenTCP(t, netip.AddrPortFrom(addr, e2e.TCPPort)),
		UDP:   n.ListenUDP(t, netip.AddrPortFrom(addr, e2e.UDPPort)),
		ICMP:  n.ListenICMP(t),
	}
}

// kubectl runs kubectl against the cluster and returns its standard output.
func (c *cluster) kubectl(args ...string) (string, error) {
	cmd := exec.Command(c.env["IPM_K8S_KUBECTL"], args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out), fmt.Errorf("kubectl %s: %v: %s", strings.Join(args, " "), err, stderr.String())
	}
	return string(out), nil
}

func (c *cluster) mustKubectl(t *testing.T, args ...string) string {
	t.Helper()
	out, err := c.kubectl(args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// inNode runs a command in the node: its network namespace and the mount
// namespace where the kubelet, containerd and the agent's bpffs are.
func (c *cluster) inNode(args ...string) (string, error) {
	full := append([]string{"-t", c.env["IPM_K8S_HOLDER_PID"], "-m", "-n", "--"}, args...)
	out, err := exec.Command("nsenter", full...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("in the node: %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// pod is a pod of the probe image, entered through its network namespace so
// that the traffic helpers of test/e2e run from it.
type pod struct {
	name string
	ip   netip.Addr
	ns   *e2e.Netns
}

// newPod starts a probe pod, waits until it runs and opens its network
// namespace (through its container's process); t.Cleanup deletes it.
func (c *cluster) newPod(t *testing.T, name string) *pod {
	t.Helper()
	c.mustKubectl(t, "run", name, "--image="+c.env["IPM_K8S_PROBE_IMAGE"], "--image-pull-policy=Never",
		"--overrides", `{"spec":{"automountServiceAccountToken":false,"terminationGracePeriodSeconds":1}}`)
	t.Cleanup(func() { c.kubectl("delete", "pod", name, "--wait=false") })
	c.mustKubectl(t, "wait", "--for=condition=Ready", "pod/"+name, "--timeout=120s")
	ipText := c.mustKubectl(t, "get", "pod", name, "-o", "jsonpath={.status.podIP}")
	ip, err := netip.ParseAddr(ipText)
	if err != nil {
		t.Fatalf("pod %s: ip %q: %v", name, ipText, err)
	}
	id := strings.TrimPrefix(c.mustKubectl(t, "get", "pod", name, "-o", "jsonpath={.status.containerStatuses[0].containerID}"), "containerd://")
	pid, err := c.taskPid(id)
	if err != nil {
		t.Fatalf("pod %s: %v", name, err)
	}
	h, err := netns.GetFromPath(fmt.Sprintf("/proc/%d/ns/net", pid))
	if err != nil {
		t.Fatalf("pod %s: netns of pid %d: %v", name, pid, err)
	}
	t.Cleanup(func() { h.Close() })
	return &pod{name: name, ip: ip, ns: &e2e.Netns{Name: "pod " + name, Role: name, Handle: h, Addr: ip}}
}

// taskPid is the process of a container, as containerd knows it.
func (c *cluster) taskPid(id string) (int, error) {
	out, err := c.inNode("ctr", "--address", c.env["IPM_K8S_CONTAINERD"], "-n", "k8s.io", "task", "ls")
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == id {
			return strconv.Atoi(f[1])
		}
	}
	return 0, fmt.Errorf("container %s has no task: %s", id, out)
}

// sources are what the internet and VPC hosts saw of one pod, per protocol.
type sources struct{ tcp, udp, icmp netip.Addr }

// sourcesAt probes host from the pod with TCP, UDP and ping and returns the
// source addresses the host saw; an error when one did not get through.
func sourcesAt(p *pod, h *e2e.Host) (sources, error) {
	var s sources
	tp, err := p.ns.TCPPeer(h.TCPAddr(), 0, e2e.ProbeTimeout)
	if err != nil {
		return s, fmt.Errorf("tcp to %s: %w", h.Role, err)
	}
	s.tcp = tp.Addr()
	up, err := p.ns.UDPPeer(h.UDPAddr(), 0, e2e.ProbeTimeout)
	if err != nil {
		return s, fmt.Errorf("udp to %s: %w", h.Role, err)
	}
	s.udp = up.Peer.Addr()
	s.icmp, err = h.PingSource(p.ns, uint16(time.Now().UnixNano()), e2e.ProbeTimeout)
	if err != nil {
		return s, fmt.Errorf("ping to %s: %w", h.Role, err)
	}
	return s, nil
}

// expectSources fails unless every protocol reached host with source want.
func expectSources(t *testing.T, p *pod, h *e2e.Host, want netip.Addr) {
	t.Helper()
	s, err := sourcesAt(p, h)
	if err != nil {
		t.Fatalf("pod %s: %v", p.ip, err)
	}
	if s.tcp != want || s.udp != want || s.icmp != want {
		t.Fatalf("pod %s -> %s: sources tcp %s, udp %s, icmp %s; want %s for all", p.ip, h.Role, s.tcp, s.udp, s.icmp, want)
	}
}

// waitFor polls cond every 100 ms until it holds or timeout passes; it
// returns how long that took.
func waitFor(timeout time.Duration, cond func() bool) (time.Duration, bool) {
	start := time.Now()
	for {
		if cond() {
			return time.Since(start), true
		}
		if time.Since(start) > timeout {
			return time.Since(start), false
		}
		time.Sleep(100 * time.Millisecond)
	}
}
