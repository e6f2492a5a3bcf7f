package k8s

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

const (
	dsName = "ip-masq-agent"
	// The VPC (10.100.0.0/24) and the pods are in 10.0.0.0/8: unmasqueraded.
	configVPC = "nonMasqueradeCIDRs:\n  - 10.0.0.0/8\nresyncInterval: 60s\n"
	// Everything masqueraded, the VPC too.
	configAll = "nonMasqueradeCIDRs: []\nresyncInterval: 60s\n"
)

// overlay is a kustomization on top of deploy/ (or deploy/uninstall) as a
// user writes one: the locally imported image and their own config.yml.
type overlay struct {
	tag            string // tag of the agent image cluster.sh imported (two "builds")
	config         string
	leastPrivilege bool // with the deploy/least-privilege component
	uninstall      bool // deploy/uninstall instead of deploy
}

// write renders the overlay into a new directory and returns it.
func (c *cluster) write(t *testing.T, o overlay) string {
	t.Helper()
	dir := t.TempDir()
	base := filepath.Join(c.repo, "deploy")
	if o.uninstall {
		base = filepath.Join(base, "uninstall")
	}
	rel, err := filepath.Rel(dir, base)
	if err != nil {
		t.Fatal(err)
	}
	k := fmt.Sprintf(`apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - %s
images:
  - name: ghcr.io/ipmasq-ebpf/ip-masq-agent
    newName: %s
    newTag: %s
`, rel, c.env["IPM_K8S_AGENT_IMAGE"], o.tag)
	if o.config != "" {
		k += `configMapGenerator:
  - name: ip-masq-agent
    namespace: kube-system
    behavior: replace
    files:
      - config=config.yml
`
		if err := os.WriteFile(filepath.Join(dir, "config.yml"), []byte(o.config), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if o.leastPrivilege {
		lp, err := filepath.Rel(dir, filepath.Join(c.repo, "deploy", "least-privilege"))
		if err != nil {
			t.Fatal(err)
		}
		k += "components:\n  - " + lp + "\n"
		if !inBoundingSet(capSysResource) {
			// runc cannot grant a capability the host's bounding set lacks
			// (the container fails with "unable to apply caps"). The agent
			// needs CAP_SYS_RESOURCE only on kernels before 5.11, which
			// charge BPF memory to RLIMIT_MEMLOCK; the test checks that
			// the entry is the one it removes.
			t.Logf("this host's capability bounding set lacks CAP_SYS_RESOURCE: running the component without it")
			k += `patches:
  - target: {kind: DaemonSet, name: ip-masq-agent}
    patch: |
      - {op: test, path: /spec/template/spec/containers/0/securityContext/capabilities/add/4, value: SYS_RESOURCE}
      - {op: remove, path: /spec/template/spec/containers/0/securityContext/capabilities/add/4}
`
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "kustomization.yaml"), []byte(k), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

// apply applies the overlay and waits until its DaemonSet has rolled out;
// it returns how long that took.
func (c *cluster) apply(t *testing.T, o overlay) time.Duration {
	t.Helper()
	name := dsName
	if o.uninstall {
		name = dsName + "-cleanup"
	}
	start := time.Now()
	c.mustKubectl(t, "apply", "-k", c.write(t, o))
	c.rollout(t, name)
	return time.Since(start)
}

// rollout waits until every pod of the DaemonSet is updated and Ready.
func (c *cluster) rollout(t *testing.T, name string) {
	t.Helper()
	if _, err := c.kubectl("-n", "kube-system", "rollout", "status", "ds/"+name, "--timeout=180s"); err != nil {
		c.describe(t)
		t.Fatal(err)
	}
}

// describe logs the state of the agent's pods, for a failure.
func (c *cluster) describe(t *testing.T) {
	out, _ := c.kubectl("-n", "kube-system", "describe", "pods")
	logs, _ := c.kubectl("-n", "kube-system", "logs", "--tail=40", "-l", "k8s-app", "--all-containers", "--prefix")
	t.Logf("kube-system pods:\n%s\nlogs:\n%s", out, logs)
}

// agentPod is the name of the one running agent pod, and its image.
func (c *cluster) agentPod(t *testing.T) (name, image string) {
	t.Helper()
	out := c.mustKubectl(t, "-n", "kube-system", "get", "pods", "-l", "k8s-app="+dsName,
		"--field-selector=status.phase=Running",
		"-o", `jsonpath={range .items[*]}{.metadata.name} {.spec.containers[0].image}{"\n"}{end}`)
	lines := strings.Fields(out)
	if len(lines) != 2 {
		t.Fatalf("agent pods: %q, want exactly one", out)
	}
	return lines[0], lines[1]
}

// configMap is the name of the ConfigMap the DaemonSet mounts (hashed).
func (c *cluster) configMap(t *testing.T) string {
	t.Helper()
	return c.mustKubectl(t, "-n", "kube-system", "get", "ds", dsName,
		"-o", `jsonpath={.spec.template.spec.volumes[?(@.name=="config")].configMap.name}`)
}

// restarts is the agent container's restart count in pod name.
func (c *cluster) restarts(t *testing.T, name string) string {
	t.Helper()
	return c.mustKubectl(t, "-n", "kube-system", "get", "pod", name, "-o", "jsonpath={.status.containerStatuses[0].restartCount}")
}

// capSysResource is CAP_SYS_RESOURCE's bit (linux/capability.h).
const capSysResource = 24

// inBoundingSet tells whether this process's capability bounding set, which
// the node's daemons inherit, holds capability bit.
func inBoundingSet(bit uint) bool {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return true
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "CapBnd:"); ok {
			set, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			return err != nil || set&(1<<bit) != 0
		}
	}
	return true
}
