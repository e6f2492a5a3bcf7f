package deploy

import (
	"math/bits"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/ipmasq-ebpf/ip-masq-agent/config"
)

// The kernel memory of the datapath, measured from the memlock of every
// map fd the agent holds (docs/deployment.md, "Memory"), Linux 6.18, 2
// CPUs. A hash map pays its element for each of max_entries and a 16-byte
// bucket for each of max_entries rounded up to a power of two.
const (
	natElem4 = 104 // ipm_nat4: element (key, value, the kernel's header)
	natElem6 = 136 // ipm_nat6
	bucket   = 16
	// Every other map at its fixed size: 32.1 MiB measured, and room for
	// a large non-masquerade list in the tries and 10,000 node addresses.
	otherMaps = 40 << 20
	// The same for the IPv6 maps that --enable-ipv6 sizes (26.6 MiB).
	otherMaps6 = 27 << 20
	// The agent process: 20-22 MiB at rest, 79 MiB at its highest peak
	// (docs/performance.md).
	agentProcess = 96 << 20
)

// memoryNeeded is the formula of deploy/daemonset.yml's comment.
func memoryNeeded(f *config.Flags) int64 {
	e := int64(f.NATMaxEntries)
	buckets := int64(1) << bits.Len64(uint64(e-1))
	need := e*natElem4 + buckets*bucket + otherMaps + agentProcess
	if f.EnableIPv6 {
		need += e*natElem6 + buckets*bucket + otherMaps6
	}
	return need
}

// checkMemoryLimit: the pod's memory limit holds the maps that the flags
// the manifest passes make, and the agent; a cgroup that cannot would kill
// the agent at start (or fail its map creation) on every node.
func checkMemoryLimit(t *testing.T, c *corev1.Container, f *config.Flags) {
	t.Helper()
	limit, ok := c.Resources.Limits[corev1.ResourceMemory]
	if !ok {
		t.Error("no memory limit")
		return
	}
	if need := memoryNeeded(f); limit.Value() < need {
		t.Errorf("memory limit %s, want at least %d MiB for --nat-max-entries=%d --enable-ipv6=%v (the formula in daemonset.yml)",
			limit.String(), need>>20, f.NATMaxEntries, f.EnableIPv6)
	}
}

// The formula against the measurements it comes from, so a change of the
// constants that no longer matches them fails here.
func TestMemoryFormula(t *testing.T) {
	for _, m := range []struct {
		entries int
		ipv6    bool
		maps    int64 // measured memlock of every map
	}{
		{65536, false, 41541864},
		{131072, false, 49406184},
		{262144, false, 65134824},
		{1048576, false, 159506664},
		{131072, true, 97165544},
		{262144, true, 132817128},
		{1048576, true, 346726632},
	} {
		f := &config.Flags{NATMaxEntries: m.entries, EnableIPv6: m.ipv6}
		maps := memoryNeeded(f) - agentProcess
		if maps < m.maps || maps > m.maps+16<<20 {
			t.Errorf("%d entries, IPv6 %v: formula gives %d bytes of maps, measured %d (want at most 16 MiB above)", m.entries, m.ipv6, maps, m.maps)
		}
	}
}
