package deploy

import (
	"bytes"
	"flag"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"

	"github.com/ipmasq-ebpf/ip-masq-agent/config"
)

// render builds the kustomization in dir with the kustomize library (no
// kubectl, no network) and returns the YAML stream.
func render(t *testing.T, dir string) []byte {
	t.Helper()
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	res, err := k.Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		t.Fatalf("kustomize build %s: %v", dir, err)
	}
	out, err := res.AsYaml()
	if err != nil {
		t.Fatalf("kustomize build %s: %v", dir, err)
	}
	return out
}

// withComponent writes an overlay, as an operator would, of the base and
// one component of deploy/, and returns its directory.
func withComponent(t *testing.T, component string) string {
	t.Helper()
	base, err := filepath.Abs(".")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	rel, err := filepath.Rel(dir, base)
	if err != nil {
		t.Fatal(err)
	}
	k := "resources:\n  - " + rel + "\ncomponents:\n  - " + filepath.Join(rel, component) + "\n"
	if err := os.WriteFile(filepath.Join(dir, "kustomization.yaml"), []byte(k), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

// objects is a rendered stream, decoded strictly into k8s.io/api types.
type objects struct {
	ds  *appsv1.DaemonSet
	cms []*corev1.ConfigMap
}

// decode splits the stream and decodes every document into its API type; a
// field that the type does not have, a duplicate field or an unexpected
// kind fails the test.
func decode(t *testing.T, stream []byte) objects {
	t.Helper()
	objs := decodeAny(t, stream)
	if objs.ds == nil || len(objs.cms) != 1 {
		t.Fatalf("want one DaemonSet and one ConfigMap, got %d DaemonSets and %d ConfigMaps", btoi(objs.ds != nil), len(objs.cms))
	}
	return objs
}

// decodeAny is decode without expectations on what the stream holds.
func decodeAny(t *testing.T, stream []byte) objects {
	t.Helper()
	var objs objects
	for _, doc := range regexp.MustCompile(`(?m)^---\s*$`).Split(string(stream), -1) {
		if strings.TrimSpace(doc) == "" {
			continue
		}
		var meta struct{ APIVersion, Kind string }
		if err := yaml.Unmarshal([]byte(doc), &meta); err != nil {
			t.Fatalf("decode: %v\n%s", err, doc)
		}
		var obj any
		switch meta.APIVersion + " " + meta.Kind {
		case "apps/v1 DaemonSet":
			if objs.ds != nil {
				t.Fatal("two DaemonSets")
			}
			objs.ds = &appsv1.DaemonSet{}
			obj = objs.ds
		case "v1 ConfigMap":
			cm := &corev1.ConfigMap{}
			objs.cms = append(objs.cms, cm)
			obj = cm
		default:
			t.Fatalf("unexpected object %s %s", meta.APIVersion, meta.Kind)
		}
		if err := yaml.UnmarshalStrict([]byte(doc), obj); err != nil {
			t.Fatalf("%s: not a valid %s: %v\n%s", meta.Kind, meta.APIVersion, err, doc)
		}
	}
	return objs
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// agentFlags parses the container's arguments with the agent's own flag set
// and validation.
func agentFlags(t *testing.T, c corev1.Container) (*flag.FlagSet, *config.Flags) {
	t.Helper()
	fs, f := config.NewFlagSet("ip-masq-agent")
	fs.SetOutput(io.Discard)
	if len(c.Command) > 0 {
		t.Errorf("container command %v overrides the image's entrypoint", c.Command)
	}
	if err := fs.Parse(c.Args); err != nil {
		t.Fatalf("the agent refuses its arguments %v: %v", c.Args, err)
	}
	if fs.NArg() > 0 {
		t.Fatalf("arguments %v: unexpected %v", c.Args, fs.Args())
	}
	if err := f.Validate(); err != nil {
		t.Fatalf("the agent refuses its arguments %v: %v", c.Args, err)
	}
	return fs, f
}

func splitHostPort(t *testing.T, flagName, addr string) (string, int32) {
	t.Helper()
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatalf("--%s=%q: %v", flagName, addr, err)
	}
	n, err := strconv.Atoi(port)
	if err != nil {
		t.Fatalf("--%s=%q: %v", flagName, addr, err)
	}
	return host, int32(n)
}

func mountAt(c corev1.Container, path string) *corev1.VolumeMount {
	for i := range c.VolumeMounts {
		if c.VolumeMounts[i].MountPath == path {
			return &c.VolumeMounts[i]
		}
	}
	return nil
}

func volume(spec corev1.PodSpec, name string) *corev1.Volume {
	for i := range spec.Volumes {
		if spec.Volumes[i].Name == name {
			return &spec.Volumes[i]
		}
	}
	return nil
}

// checkDaemonSet checks what both variants share against the agent's real
// flags, defaults and config parser.
func checkDaemonSet(t *testing.T, objs objects) (corev1.Container, *config.Flags) {
	t.Helper()
	ds, cm := objs.ds, objs.cms[0]
	if ds.Namespace != "kube-system" || cm.Namespace != "kube-system" {
		t.Errorf("namespaces %q and %q, want kube-system", ds.Namespace, cm.Namespace)
	}
	spec := ds.Spec.Template.Spec
	if len(spec.Containers) != 1 {
		t.Fatalf("%d containers, want 1", len(spec.Containers))
	}
	c := spec.Containers[0]
	_, f := agentFlags(t, c)

	// Selector and labels.
	if ds.Spec.Selector == nil || len(ds.Spec.Selector.MatchLabels) == 0 {
		t.Fatal("no selector")
	}
	for k, v := range ds.Spec.Selector.MatchLabels {
		if ds.Spec.Template.Labels[k] != v {
			t.Errorf("selector %s=%s does not match the pod labels %v", k, v, ds.Spec.Template.Labels)
		}
	}

	// One agent per node at any time, one node at a time.
	ru := ds.Spec.UpdateStrategy.RollingUpdate
	if ds.Spec.UpdateStrategy.Type != appsv1.RollingUpdateDaemonSetStrategyType || ru == nil ||
		ru.MaxUnavailable == nil || *ru.MaxUnavailable != intstr.FromInt32(1) ||
		ru.MaxSurge == nil || ru.MaxSurge.IntValue() != 0 {
		t.Errorf("update strategy %+v, want RollingUpdate with maxUnavailable 1 and maxSurge 0", ds.Spec.UpdateStrategy)
	}

	// Host network, priority, every taint tolerated.
	if !spec.HostNetwork {
		t.Error("hostNetwork is false: the agent must manage the node's interfaces")
	}
	if spec.PriorityClassName != "system-node-critical" {
		t.Errorf("priorityClassName %q, want system-node-critical", spec.PriorityClassName)
	}
	if !slices.ContainsFunc(spec.Tolerations, func(tl corev1.Toleration) bool {
		return tl.Operator == corev1.TolerationOpExists && tl.Key == "" && tl.Effect == ""
	}) {
		t.Errorf("tolerations %+v do not tolerate every taint (operator: Exists without key or effect)", spec.Tolerations)
	}

	// Image and resources.
	if !regexp.MustCompile(`^[a-z0-9./-]+/ip-masq-agent:v[0-9][0-9A-Za-z.+-]*$`).MatchString(c.Image) {
		t.Errorf("image %q, want a registry, the name ip-masq-agent and a version tag", c.Image)
	}
	for _, r := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
		if _, ok := c.Resources.Requests[r]; !ok {
			t.Errorf("no %s request", r)
		}
	}
	if _, ok := c.Resources.Limits[corev1.ResourceMemory]; !ok {
		t.Error("no memory limit")
	}

	// The config: the generated ConfigMap, mounted where --config reads it,
	// optional (no ConfigMap means the defaults), and a file that the
	// agent's own parser accepts with the agent's options.
	m := mountAt(c, filepath.Dir(f.ConfigPath))
	if m == nil {
		t.Fatalf("nothing mounted at %s, the directory of --config=%s", filepath.Dir(f.ConfigPath), f.ConfigPath)
	}
	v := volume(spec, m.Name)
	if v == nil || v.ConfigMap == nil {
		t.Fatalf("the volume at %s is not a ConfigMap", m.MountPath)
	}
	if v.ConfigMap.Name != cm.Name || !strings.HasPrefix(cm.Name, "ip-masq-agent-") {
		t.Errorf("the volume uses ConfigMap %q, the generated one is %q", v.ConfigMap.Name, cm.Name)
	}
	if v.ConfigMap.Optional == nil || !*v.ConfigMap.Optional {
		t.Error("the config volume is not optional: without the ConfigMap the pod would not start")
	}
	want := []corev1.KeyToPath{{Key: "config", Path: filepath.Base(f.ConfigPath)}}
	if !reflect.DeepEqual(v.ConfigMap.Items, want) {
		t.Errorf("config items %+v, want %+v", v.ConfigMap.Items, want)
	}
	if m.SubPath != "" {
		t.Error("the config is mounted with subPath: kubelet would never update it")
	}
	fileData, err := os.ReadFile("config.yml")
	if err != nil {
		t.Fatal(err)
	}
	if cm.Data["config"] != string(fileData) {
		t.Errorf("ConfigMap key config differs from config.yml")
	}
	cfg, err := config.Parse([]byte(cm.Data["config"]), f.Options())
	if err != nil {
		t.Fatalf("the agent rejects config.yml: %v", err)
	}
	if len(cfg.NonMasqueradeCIDRs) != 0 || cfg.ResyncInterval.String() != "1m0s" || cfg.MasqLinkLocal || cfg.MasqLinkLocalIPv6 {
		t.Errorf("config.yml: %+v, want the katalog's defaults (empty list, 60s, link-local kept)", cfg)
	}

	// The pins: the host's /sys/fs/bpf, above --pin-path.
	var bpf *corev1.VolumeMount
	for i := range c.VolumeMounts {
		vm := &c.VolumeMounts[i]
		if rel, err := filepath.Rel(vm.MountPath, f.PinPath); err == nil && !strings.HasPrefix(rel, "..") && rel != "." {
			bpf = vm
		}
	}
	if bpf == nil {
		t.Fatalf("no volume mounted above --pin-path=%s", f.PinPath)
	}
	bv := volume(spec, bpf.Name)
	if bv == nil || bv.HostPath == nil || bv.HostPath.Path != bpf.MountPath || bpf.MountPath != "/sys/fs/bpf" {
		t.Errorf("pins: %+v mounted at %s, want the host's /sys/fs/bpf at /sys/fs/bpf", bv, bpf.MountPath)
	}
	if bpf.ReadOnly {
		t.Error("the bpffs is mounted read-only: the agent pins there")
	}

	// The node's xtables lock, for removing the legacy iptables chain.
	if m := mountAt(c, "/run/xtables.lock"); m == nil {
		t.Error("/run/xtables.lock is not mounted")
	} else if v := volume(spec, m.Name); v == nil || v.HostPath == nil || v.HostPath.Path != "/run/xtables.lock" ||
		v.HostPath.Type == nil || *v.HostPath.Type != corev1.HostPathFileOrCreate {
		t.Errorf("/run/xtables.lock comes from %+v, want the host's file (FileOrCreate)", v)
	}

	// Ports and probes: the agent's default listeners.
	_, metricsPort := splitHostPort(t, "metrics-address", f.MetricsAddress)
	if !slices.ContainsFunc(c.Ports, func(p corev1.ContainerPort) bool {
		return p.Name == "metrics" && p.ContainerPort == metricsPort && p.Protocol == corev1.ProtocolTCP
	}) {
		t.Errorf("ports %+v, want metrics on %d (--metrics-address=%s)", c.Ports, metricsPort, f.MetricsAddress)
	}
	if got := ds.Spec.Template.Annotations["prometheus.io/port"]; got != strconv.Itoa(int(metricsPort)) {
		t.Errorf("prometheus.io/port annotation %q, want %d", got, metricsPort)
	}
	healthHost, healthPort := splitHostPort(t, "health-address", f.HealthAddress)
	for _, p := range []struct {
		name  string
		probe *corev1.Probe
		path  string
	}{{"liveness", c.LivenessProbe, "/healthz"}, {"readiness", c.ReadinessProbe, "/readyz"}} {
		if p.probe == nil || p.probe.HTTPGet == nil {
			t.Errorf("no HTTP %s probe", p.name)
			continue
		}
		g := p.probe.HTTPGet
		if g.Path != p.path || g.Port != intstr.FromInt32(healthPort) || g.Host != healthHost {
			t.Errorf("%s probe %s:%s%s, want %s:%d%s (--health-address=%s)", p.name, g.Host, g.Port.String(), g.Path,
				healthHost, healthPort, p.path, f.HealthAddress)
		}
	}
	checkMemoryLimit(t, &c, f)
	return c, f
}

// TestManifests renders deploy/ and checks every object against the API
// types and the DaemonSet against the agent's flags, defaults and parser.
func TestManifests(t *testing.T) {
	objs := decode(t, render(t, "."))
	c, _ := checkDaemonSet(t, objs)
	if c.SecurityContext == nil || c.SecurityContext.Privileged == nil || !*c.SecurityContext.Privileged {
		t.Error("the default DaemonSet is not privileged")
	}
	if m := mountAt(c, "/sys/fs/bpf"); m == nil || m.MountPropagation == nil || *m.MountPropagation != corev1.MountPropagationBidirectional {
		t.Error("/sys/fs/bpf is not mounted with Bidirectional propagation: a bpffs the agent mounts would die with the pod")
	}
	if got := objs.ds.Spec.Template.Spec.Containers[0].Args; !slices.Contains(got, "--masq-chain=IP-MASQ") {
		t.Errorf("args %v: want --masq-chain=IP-MASQ, the chain of the katalog package this replaces", got)
	}
}

// TestManifestsLeastPrivilege renders the base with the least-privilege
// component: not privileged, only the documented capabilities, and a mount
// propagation the API allows without privileges.
func TestManifestsLeastPrivilege(t *testing.T) {
	c, _ := checkDaemonSet(t, decode(t, render(t, withComponent(t, "least-privilege"))))
	sc := c.SecurityContext
	if sc == nil || sc.Privileged == nil || *sc.Privileged {
		t.Fatal("the least-privilege variant is privileged")
	}
	if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Error("allowPrivilegeEscalation is not false")
	}
	if sc.Capabilities == nil || !reflect.DeepEqual(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
		t.Errorf("capabilities %+v, want ALL dropped", sc.Capabilities)
	}
	want := []corev1.Capability{"BPF", "PERFMON", "NET_ADMIN", "SYS_ADMIN", "SYS_RESOURCE"}
	if !reflect.DeepEqual(sc.Capabilities.Add, want) {
		t.Errorf("capabilities added %v, want %v", sc.Capabilities.Add, want)
	}
	m := mountAt(c, "/sys/fs/bpf")
	if m == nil || m.MountPropagation == nil || *m.MountPropagation != corev1.MountPropagationHostToContainer {
		t.Errorf("/sys/fs/bpf mount %+v, want HostToContainer (Bidirectional needs a privileged container)", m)
	}
	if len(c.VolumeMounts) != 3 {
		t.Errorf("volume mounts %+v, want the config, the bpffs and the xtables lock only", c.VolumeMounts)
	}
}

// TestKubectlKustomize renders deploy/ with kubectl's built-in kustomize too,
// when kubectl is installed, and expects the same objects as the library.
func TestKubectlKustomize(t *testing.T) {
	kubectl, err := exec.LookPath("kubectl")
	if err != nil {
		t.Skip("kubectl is not installed; TestManifests renders with the kustomize library")
	}
	out, err := exec.Command(kubectl, "kustomize", ".").Output()
	if err != nil {
		t.Fatalf("kubectl kustomize: %v", err)
	}
	lib := decode(t, render(t, "."))
	kc := decode(t, out)
	if !reflect.DeepEqual(lib, kc) {
		a, _ := yaml.Marshal(lib.ds)
		b, _ := yaml.Marshal(kc.ds)
		t.Errorf("kubectl kustomize and the kustomize library render different objects:\n%s\n---\n%s", a, b)
	}
}

// TestDockerfileEntrypoint: the DaemonSet relies on the image's entrypoint
// (no command), so the Dockerfile must run the agent binary, built static.
func TestDockerfileEntrypoint(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("..", "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		`ENTRYPOINT ["/ip-masq-agent"]`,
		"CGO_ENABLED=0",
		"FROM scratch",
		"-X main.version=",
	} {
		if !bytes.Contains(data, []byte(want)) {
			t.Errorf("Dockerfile has no %q", want)
		}
	}
}

// TestUninstallManifests renders deploy/uninstall: a DaemonSet that runs
// `ip-masq-agent cleanup` (arguments the agent accepts, the agent's image and
// pin path) on every node, in the host's network namespace, with the host's
// bpffs.
func TestUninstallManifests(t *testing.T) {
	objs := decodeAny(t, render(t, "uninstall"))
	if objs.ds == nil || len(objs.cms) != 0 {
		t.Fatal("want one DaemonSet and nothing else")
	}
	ds := objs.ds
	spec := ds.Spec.Template.Spec
	if ds.Namespace != "kube-system" || !spec.HostNetwork || spec.PriorityClassName != "system-node-critical" {
		t.Errorf("namespace %q, hostNetwork %t, priority %q", ds.Namespace, spec.HostNetwork, spec.PriorityClassName)
	}
	if !slices.ContainsFunc(spec.Tolerations, func(tl corev1.Toleration) bool {
		return tl.Operator == corev1.TolerationOpExists && tl.Key == "" && tl.Effect == ""
	}) {
		t.Error("the cleanup does not tolerate every taint: tainted nodes would keep the datapath")
	}
	if len(spec.InitContainers) != 1 {
		t.Fatalf("%d init containers, want the cleanup", len(spec.InitContainers))
	}
	c := spec.InitContainers[0]
	if len(c.Args) == 0 || c.Args[0] != "cleanup" {
		t.Fatalf("init container args %v, want the cleanup subcommand", c.Args)
	}
	_, f := agentFlags(t, corev1.Container{Args: c.Args[1:]})
	base := decode(t, render(t, "."))
	_, agent := agentFlags(t, base.ds.Spec.Template.Spec.Containers[0])
	if f.PinPath != agent.PinPath {
		t.Errorf("cleanup --pin-path=%s, the agent pins under %s", f.PinPath, agent.PinPath)
	}
	if c.Image != base.ds.Spec.Template.Spec.Containers[0].Image {
		t.Errorf("cleanup image %q, agent image %q: keep both kustomizations' images in step", c.Image, base.ds.Spec.Template.Spec.Containers[0].Image)
	}
	if c.SecurityContext == nil || c.SecurityContext.Privileged == nil || !*c.SecurityContext.Privileged {
		t.Error("the cleanup is not privileged")
	}
	m := mountAt(c, "/sys/fs/bpf")
	if m == nil {
		t.Fatal("the cleanup does not mount /sys/fs/bpf")
	}
	if v := volume(spec, m.Name); v == nil || v.HostPath == nil || v.HostPath.Path != "/sys/fs/bpf" {
		t.Errorf("/sys/fs/bpf comes from %+v, want the host's", v)
	}
}
