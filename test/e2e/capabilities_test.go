package e2e

import (
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	"sigs.k8s.io/yaml"
)

// leastPrivilegeCaps reads the capabilities that the least-privilege
// component of deploy/ grants the agent's container.
func leastPrivilegeCaps(t *testing.T) []string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", "..", "deploy", "least-privilege", "daemonset-capabilities.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var ds appsv1.DaemonSet
	if err := yaml.UnmarshalStrict(data, &ds); err != nil {
		t.Fatalf("least-privilege patch: %v", err)
	}
	sc := ds.Spec.Template.Spec.Containers[0].SecurityContext
	if sc == nil || sc.Capabilities == nil || len(sc.Capabilities.Add) == 0 {
		t.Fatal("least-privilege patch grants no capabilities")
	}
	var caps []string
	for _, c := range sc.Capabilities.Add {
		caps = append(caps, strings.ToLower(string(c)))
	}
	return caps
}

// TestLeastPrivilege runs the agent as root with only the capabilities that
// deploy/least-privilege grants (setpriv drops every other one from the
// bounding set, as a container runtime does), and checks that it loads,
// attaches, masquerades, reports healthy, and takes its pinned datapath over
// after a restart.
func TestLeastPrivilege(t *testing.T) {
	caps := leastPrivilegeCaps(t)
	if _, err := exec.LookPath("setpriv"); err != nil {
		// util-linux is essential on Debian, so CI has it; minimal kernel
		// VMs may not.
		t.Skip("setpriv (util-linux) is not installed: cannot drop capabilities")
	}
	forEachMode(t, func(t *testing.T, mode string) {
		bounding := "--bounding-set=-all"
		for _, c := range caps {
			bounding += ",+" + c
		}
		tp, a := startAgent(t, AgentOptions{Mode: mode, Config: cfgPrivate, Wrapper: []string{"setpriv", bounding, "--"}})
		status, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(a.Pid()), "status"))
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(status), "\n") {
			if strings.HasPrefix(line, "CapEff:") || strings.HasPrefix(line, "CapBnd:") {
				t.Logf("agent %s (granted: %s)", line, strings.Join(caps, ","))
			}
		}
		expectSource(t, tp.Pod1, tp.Internet, NodeIP)
		expectTCP(t, tp.Pod1, tp.VPC, Pod1IP)
		if err := waitProbe(tp.Node, "/healthz", http.StatusOK, 5*time.Second); err != nil {
			t.Error(err)
		}
		a.Restart(t, syscall.SIGTERM)
		expectTCP(t, tp.Pod1, tp.Internet, NodeIP)
		if err := waitProbe(tp.Node, "/readyz", http.StatusOK, 5*time.Second); err != nil {
			t.Error(err)
		}
		if logs := a.Logs(); strings.Contains(logs, "operation not permitted") {
			t.Errorf("the agent hit a permission error:\n%s", logs)
		}
	})
}
