package deploy

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"
)

// The Prometheus Operator's types are not a dependency of this module: the
// monitoring objects are decoded strictly into the subset of their CRD
// fields that deploy/monitoring uses, so a misspelt or misplaced field
// fails the test.

type podMonitor struct {
	APIVersion string            `json:"apiVersion"`
	Kind       string            `json:"kind"`
	Metadata   metav1.ObjectMeta `json:"metadata"`
	Spec       struct {
		JobLabel            string               `json:"jobLabel"`
		Selector            metav1.LabelSelector `json:"selector"`
		PodMetricsEndpoints []struct {
			Port        string       `json:"port"`
			Path        string       `json:"path"`
			Interval    string       `json:"interval"`
			Relabelings []relabeling `json:"relabelings"`
		} `json:"podMetricsEndpoints"`
	} `json:"spec"`
}

type relabeling struct {
	SourceLabels []string `json:"sourceLabels"`
	TargetLabel  string   `json:"targetLabel"`
}

type prometheusRule struct {
	APIVersion string            `json:"apiVersion"`
	Kind       string            `json:"kind"`
	Metadata   metav1.ObjectMeta `json:"metadata"`
	Spec       struct {
		Groups []ruleGroup `json:"groups"`
	} `json:"spec"`
}

// ruleGroup is a rule group as both the CRD and a Prometheus rule file
// spell it, so that it marshals into a file promtool reads.
type ruleGroup struct {
	Name  string `json:"name"`
	Rules []rule `json:"rules"`
}

type rule struct {
	Alert       string            `json:"alert,omitempty"`
	Record      string            `json:"record,omitempty"`
	Expr        string            `json:"expr"`
	For         string            `json:"for,omitempty"`
	Labels      map[string]string `json:"labels,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

// monitoring is deploy/ with the monitoring component, rendered and decoded.
type monitoring struct {
	base      objects // the DaemonSet and the agent's ConfigMap
	pm        *podMonitor
	rule      *prometheusRule
	dashboard *corev1.ConfigMap
}

// decodeMonitoring takes the monitoring objects out of a rendered stream
// and decodes the rest as decode does.
func decodeMonitoring(t *testing.T, stream []byte) monitoring {
	t.Helper()
	var m monitoring
	var rest []string
	for _, doc := range regexp.MustCompile(`(?m)^---\s*$`).Split(string(stream), -1) {
		if strings.TrimSpace(doc) == "" {
			continue
		}
		var meta struct {
			APIVersion, Kind string
			Metadata         struct{ Name string }
		}
		if err := yaml.Unmarshal([]byte(doc), &meta); err != nil {
			t.Fatalf("decode: %v\n%s", err, doc)
		}
		var obj any
		switch {
		case meta.APIVersion == "monitoring.coreos.com/v1" && meta.Kind == "PodMonitor" && m.pm == nil:
			m.pm = &podMonitor{}
			obj = m.pm
		case meta.APIVersion == "monitoring.coreos.com/v1" && meta.Kind == "PrometheusRule" && m.rule == nil:
			m.rule = &prometheusRule{}
			obj = m.rule
		case meta.Kind == "ConfigMap" && meta.Metadata.Name == "ip-masq-agent-dashboard":
			m.dashboard = &corev1.ConfigMap{}
			obj = m.dashboard
		default:
			rest = append(rest, doc)
			continue
		}
		if err := yaml.UnmarshalStrict([]byte(doc), obj); err != nil {
			t.Fatalf("%s: not a valid %s: %v\n%s", meta.Kind, meta.APIVersion, err, doc)
		}
	}
	if m.pm == nil || m.rule == nil || m.dashboard == nil {
		t.Fatalf("want a PodMonitor, a PrometheusRule and the dashboard ConfigMap, got %t %t %t", m.pm != nil, m.rule != nil, m.dashboard != nil)
	}
	m.base = decode(t, []byte(strings.Join(rest, "\n---\n")))
	return m
}

// renderMonitoring renders deploy/ with deploy/monitoring as an overlay
// would.
func renderMonitoring(t *testing.T) monitoring {
	t.Helper()
	return decodeMonitoring(t, render(t, withComponent(t, "monitoring")))
}

// TestManifestsMonitoring renders the base with the monitoring component:
// the DaemonSet is unchanged, the PodMonitor selects the agent's pods and
// their metrics port, every alert says what to do and names README
// sections that exist, and the dashboard ConfigMap is dashboard.json with
// the label Grafana's sidecar looks for.
func TestManifestsMonitoring(t *testing.T) {
	m := renderMonitoring(t)
	c, _ := checkDaemonSet(t, m.base)
	ds := m.base.ds

	// The PodMonitor: the agent's namespace, pods and port.
	pm := m.pm
	if pm.Metadata.Namespace != ds.Namespace {
		t.Errorf("PodMonitor in %q, the agent in %q (a PodMonitor selects pods of its own namespace)", pm.Metadata.Namespace, ds.Namespace)
	}
	if len(pm.Spec.Selector.MatchLabels) == 0 || len(pm.Spec.Selector.MatchExpressions) != 0 {
		t.Errorf("PodMonitor selector %+v, want matchLabels only", pm.Spec.Selector)
	}
	for k, v := range pm.Spec.Selector.MatchLabels {
		if ds.Spec.Template.Labels[k] != v {
			t.Errorf("PodMonitor selects %s=%s, the agent's pods are labelled %v", k, v, ds.Spec.Template.Labels)
		}
	}
	if len(pm.Spec.PodMetricsEndpoints) != 1 {
		t.Fatalf("%d endpoints, want 1", len(pm.Spec.PodMetricsEndpoints))
	}
	ep := pm.Spec.PodMetricsEndpoints[0]
	if !slices.ContainsFunc(c.Ports, func(p corev1.ContainerPort) bool { return p.Name == ep.Port }) {
		t.Errorf("PodMonitor scrapes port %q, the container's ports are %+v", ep.Port, c.Ports)
	}
	if ep.Path != ds.Spec.Template.Annotations["prometheus.io/path"] {
		t.Errorf("PodMonitor path %q, the pods' annotation says %q", ep.Path, ds.Spec.Template.Annotations["prometheus.io/path"])
	}
	// The alerts and the dashboard name nodes by this label.
	if !slices.ContainsFunc(ep.Relabelings, func(r relabeling) bool {
		return r.TargetLabel == "node" && slices.Equal(r.SourceLabels, []string{"__meta_kubernetes_pod_node_name"})
	}) {
		t.Errorf("PodMonitor relabelings %+v do not set the node label", ep.Relabelings)
	}

	// The PrometheusRule: every alert is complete and points at the docs.
	if m.rule.Metadata.Namespace != ds.Namespace {
		t.Errorf("PrometheusRule in %q, want %q", m.rule.Metadata.Namespace, ds.Namespace)
	}
	// The job label of the targets is the value of the pods' jobLabel
	// label; the alert on up selects it.
	job := ds.Spec.Template.Labels[pm.Spec.JobLabel]
	if job == "" {
		t.Errorf("PodMonitor jobLabel %q is not a label of the agent's pods %v", pm.Spec.JobLabel, ds.Spec.Template.Labels)
	}
	upSelectors := 0
	for _, r := range alerts(t, m.rule.Spec.Groups) {
		if strings.Contains(r.Expr, "up{") {
			upSelectors++
			if !strings.Contains(r.Expr, `up{job="`+job+`"}`) {
				t.Errorf("%s: %q, want up{job=%q}", r.Alert, r.Expr, job)
			}
		}
	}
	if upSelectors != 1 {
		t.Errorf("%d alerts on up, want one (the agent down)", upSelectors)
	}
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	sections := regexp.MustCompile(`sections? ((?:"[^"]+"(?:,? and |, )?)+)`)
	quoted := regexp.MustCompile(`"([^"]+)"`)
	docs := regexp.MustCompile(`docs/[a-z0-9-]+\.md`)
	for _, r := range alerts(t, m.rule.Spec.Groups) {
		if !regexp.MustCompile(`^IPMasqAgent[A-Za-z]+$`).MatchString(r.Alert) {
			t.Errorf("alert %q: want IPMasqAgent and a CamelCase name", r.Alert)
		}
		if s := r.Labels["severity"]; s != "warning" && s != "critical" {
			t.Errorf("%s: severity %q, want warning or critical", r.Alert, s)
		}
		if r.Annotations["summary"] == "" || r.Annotations["description"] == "" || len(r.Annotations) != 2 {
			t.Errorf("%s: annotations %v, want a summary and a description", r.Alert, r.Annotations)
		}
		d := r.Annotations["description"]
		named := sections.FindAllStringSubmatch(d, -1)
		if len(named) == 0 {
			t.Errorf("%s: the description names no README section: %q", r.Alert, d)
		}
		for _, s := range named {
			for _, q := range quoted.FindAllStringSubmatch(s[1], -1) {
				if !regexp.MustCompile(`(?m)^##+ ` + regexp.QuoteMeta(q[1]) + `$`).Match(readme) {
					t.Errorf("%s: the README has no section %q", r.Alert, q[1])
				}
			}
		}
		for _, p := range docs.FindAllString(d, -1) {
			if _, err := os.Stat(filepath.Join("..", p)); err != nil {
				t.Errorf("%s: %v", r.Alert, err)
			}
		}
	}

	// The dashboard: the file itself, where Grafana's sidecar finds it.
	cm := m.dashboard
	if cm.Namespace != ds.Namespace || cm.Labels["grafana_dashboard"] != "1" {
		t.Errorf("dashboard ConfigMap %s/%s labels %v, want %s and grafana_dashboard=1", cm.Namespace, cm.Name, cm.Labels, ds.Namespace)
	}
	data, err := os.ReadFile("monitoring/dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	if len(cm.Data) != 1 || cm.Data["ip-masq-agent.json"] != string(data) {
		t.Errorf("dashboard ConfigMap has %d keys, want ip-masq-agent.json alone, holding dashboard.json", len(cm.Data))
	}
}

// alerts returns the alerting rules of the groups.
func alerts(t *testing.T, groups []ruleGroup) []rule {
	t.Helper()
	var out []rule
	for _, g := range groups {
		for _, r := range g.Rules {
			if r.Alert == "" {
				t.Errorf("group %s: a rule without alert (%q): the component has only alerts", g.Name, r.Expr)
				continue
			}
			out = append(out, r)
		}
	}
	if len(out) == 0 {
		t.Fatal("no alerts")
	}
	return out
}

// TestMonitoringBaseComponent: uncommenting the component in
// deploy/kustomization.yaml, as its comment offers, renders the same
// monitoring objects as an overlay does.
func TestMonitoringBaseComponent(t *testing.T) {
	data, err := os.ReadFile("kustomization.yaml")
	if err != nil {
		t.Fatal(err)
	}
	on := strings.Replace(string(data), "# components:\n#   - least-privilege\n#   - monitoring\n", "components:\n  - monitoring\n", 1)
	if on == string(data) {
		t.Fatal(`kustomization.yaml has no commented "components:" list ending in "monitoring"`)
	}
	// A copy of deploy/ with the edited kustomization.yaml.
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "monitoring"), 0o755); err != nil {
		t.Fatal(err)
	}
	files, err := filepath.Glob("monitoring/*")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range append(files, "daemonset.yml", "daemonset-args.yml", "config.yml") {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, f), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "kustomization.yaml"), []byte(on), 0o644); err != nil {
		t.Fatal(err)
	}
	got := decodeMonitoring(t, render(t, dir))
	want := renderMonitoring(t)
	// The base's labels transformer adds k8s-app to the component's
	// objects; they carry it already.
	for _, p := range []struct {
		name      string
		got, want any
	}{{"PodMonitor", got.pm, want.pm}, {"PrometheusRule", got.rule, want.rule}, {"dashboard", got.dashboard, want.dashboard}} {
		a, _ := yaml.Marshal(p.got)
		b, _ := yaml.Marshal(p.want)
		if string(a) != string(b) {
			t.Errorf("%s differs between the base with the component and an overlay:\n%s\n---\n%s", p.name, a, b)
		}
	}
}

// promtool returns the path of promtool. It fails the test as root (CI,
// where `make setup` installs it) and skips it otherwise when missing.
func promtool(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("promtool")
	if err == nil {
		return p
	}
	if os.Geteuid() == 0 {
		t.Fatal("promtool is not installed (make setup installs Debian's prometheus package)")
	}
	t.Skip("promtool is not installed; `make setup` (root) installs it")
	return ""
}

// writeRules writes the groups as a Prometheus rule file.
func writeRules(t *testing.T, path string, groups []ruleGroup) {
	t.Helper()
	out, err := yaml.Marshal(map[string]any{"groups": groups})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, out, 0o644); err != nil {
		t.Fatal(err)
	}
}

// rulesTest is the part of rules_test.yml that says which alert is
// expected when.
type rulesTest struct {
	Tests []struct {
		AlertRuleTest []struct {
			EvalTime  string `json:"eval_time"`
			Alertname string `json:"alertname"`
			ExpAlerts []any  `json:"exp_alerts"`
		} `json:"alert_rule_test"`
	} `json:"tests"`
}

// runRulesTest runs `promtool test rules` on rules_test.yml against groups.
func runRulesTest(t *testing.T, groups []ruleGroup) (string, error) {
	t.Helper()
	tool := promtool(t)
	dir := t.TempDir()
	writeRules(t, filepath.Join(dir, "rules.yml"), groups)
	data, err := os.ReadFile("monitoring/rules_test.yml")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "rules_test.yml"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(tool, "test", "rules", "rules_test.yml")
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// TestAlertRules checks the rule groups of the PrometheusRule with
// promtool and runs monitoring/rules_test.yml against them: every alert
// fires on input series that should fire it and stays silent on series
// that should not.
func TestAlertRules(t *testing.T) {
	tool := promtool(t)
	groups := renderMonitoring(t).rule.Spec.Groups
	path := filepath.Join(t.TempDir(), "rules.yml")
	writeRules(t, path, groups)
	if out, err := exec.Command(tool, "check", "rules", path).CombinedOutput(); err != nil {
		t.Fatalf("promtool check rules: %v\n%s", err, out)
	}
	if out, err := runRulesTest(t, groups); err != nil {
		t.Fatalf("promtool test rules: %v\n%s", err, out)
	}

	// Every alert has a case where it fires and one where it does not.
	data, err := os.ReadFile("monitoring/rules_test.yml")
	if err != nil {
		t.Fatal(err)
	}
	var rt rulesTest
	if err := yaml.Unmarshal(data, &rt); err != nil {
		t.Fatal(err)
	}
	fires, silent := map[string]bool{}, map[string]bool{}
	for _, tc := range rt.Tests {
		for _, a := range tc.AlertRuleTest {
			if len(a.ExpAlerts) > 0 {
				fires[a.Alertname] = true
			} else {
				silent[a.Alertname] = true
			}
		}
	}
	names := map[string]bool{}
	for _, r := range alerts(t, groups) {
		names[r.Alert] = true
		if !fires[r.Alert] || !silent[r.Alert] {
			t.Errorf("%s: rules_test.yml has a case that fires it: %t, one where it stays silent: %t; want both", r.Alert, fires[r.Alert], silent[r.Alert])
		}
	}
	for n := range fires {
		if !names[n] {
			t.Errorf("rules_test.yml tests %s, which is no alert of the PrometheusRule", n)
		}
	}
}

// TestAlertRulesCanFail shows that rules_test.yml notices each alert: with
// every alert silenced, promtool reports a failure for each of them, and
// with every alert always firing too.
func TestAlertRulesCanFail(t *testing.T) {
	groups := renderMonitoring(t).rule.Spec.Groups
	for _, mutation := range []struct {
		name string
		expr func(string) string
	}{
		{"silenced", func(e string) string { return "(" + e + ") and on() (vector(0) > 1)" }},
		{"always firing", func(e string) string { return "(" + e + ") or vector(1)" }},
	} {
		mutated := make([]ruleGroup, len(groups))
		for i, g := range groups {
			mutated[i] = ruleGroup{Name: g.Name}
			for _, r := range g.Rules {
				r.Expr = mutation.expr(r.Expr)
				mutated[i].Rules = append(mutated[i].Rules, r)
			}
		}
		out, err := runRulesTest(t, mutated)
		if err == nil {
			t.Errorf("%s: promtool test rules passed:\n%s", mutation.name, out)
			continue
		}
		for _, g := range groups {
			for _, r := range g.Rules {
				if !strings.Contains(out, "alertname: "+r.Alert+",") {
					t.Errorf("%s: no failure reported for %s:\n%s", mutation.name, r.Alert, out)
				}
			}
		}
	}
}

// dashboard is the part of dashboard.json the tests read.
type dashboard struct {
	Title      string `json:"title"`
	UID        string `json:"uid"`
	Templating struct {
		List []struct {
			Name       string `json:"name"`
			Type       string `json:"type"`
			Definition string `json:"definition"`
		} `json:"list"`
	} `json:"templating"`
	Panels []panel `json:"panels"`
}

type panel struct {
	ID         int    `json:"id"`
	Type       string `json:"type"`
	Title      string `json:"title"`
	Datasource *struct {
		Type string `json:"type"`
		UID  string `json:"uid"`
	} `json:"datasource"`
	Targets []struct {
		Expr  string `json:"expr"`
		RefID string `json:"refId"`
	} `json:"targets"`
	Panels []panel `json:"panels"`
}

func readDashboard(t *testing.T) dashboard {
	t.Helper()
	data, err := os.ReadFile("monitoring/dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	if err := json.Unmarshal(data, &d); err != nil {
		t.Fatalf("dashboard.json: %v", err)
	}
	return d
}

// dashboardQuery is one PromQL query of the dashboard.
type dashboardQuery struct{ where, expr string }

// queries returns every panel query of the dashboard. It fails on a panel
// without its data source variable or without queries.
func (d dashboard) queries(t *testing.T) []dashboardQuery {
	t.Helper()
	var out []dashboardQuery
	ids := map[int]bool{}
	var walk func([]panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			if ids[p.ID] {
				t.Errorf("panel %q: id %d used twice", p.Title, p.ID)
			}
			ids[p.ID] = true
			walk(p.Panels)
			if p.Type == "row" {
				continue
			}
			if p.Datasource == nil || p.Datasource.Type != "prometheus" || p.Datasource.UID != "${datasource}" {
				t.Errorf("panel %q: data source %+v, want prometheus ${datasource}", p.Title, p.Datasource)
			}
			if len(p.Targets) == 0 {
				t.Errorf("panel %q has no queries", p.Title)
			}
			for _, q := range p.Targets {
				out = append(out, dashboardQuery{p.Title + " " + q.RefID, q.Expr})
			}
		}
	}
	walk(d.Panels)
	return out
}

// grafanaVars are the variables the dashboard's queries use, with a value
// that makes them plain PromQL.
var grafanaVars = strings.NewReplacer(`$__rate_interval`, `5m`, `$node`, `.*`)

// TestDashboard checks dashboard.json: valid JSON with every panel on the
// data source variable, and every query valid PromQL, which promtool
// checks as a recording rule once Grafana's variables are substituted.
func TestDashboard(t *testing.T) {
	d := readDashboard(t)
	if d.Title == "" || d.UID == "" {
		t.Errorf("title %q, uid %q: want both (the uid keeps links stable)", d.Title, d.UID)
	}
	vars := map[string]bool{}
	for _, v := range d.Templating.List {
		vars[v.Name] = true
	}
	if !vars["datasource"] || !vars["node"] {
		t.Errorf("variables %v, want datasource and node", vars)
	}
	qs := d.queries(t)
	if len(qs) < 10 {
		t.Fatalf("%d queries", len(qs))
	}
	var g ruleGroup
	g.Name = "dashboard"
	for i, q := range qs {
		e := grafanaVars.Replace(q.expr)
		if strings.Contains(e, "$") {
			t.Errorf("%s: a variable other than $node and $__rate_interval: %q", q.where, q.expr)
		}
		g.Rules = append(g.Rules, rule{Record: "dashboard:query_" + string(rune('a'+i/26)) + string(rune('a'+i%26)), Expr: e})
	}
	tool := promtool(t)
	path := filepath.Join(t.TempDir(), "dashboard-rules.yml")
	writeRules(t, path, []ruleGroup{g})
	if out, err := exec.Command(tool, "check", "rules", path).CombinedOutput(); err != nil {
		t.Fatalf("promtool check rules on the dashboard's queries: %v\n%s", err, out)
	}
}

// TestKubectlKustomizeMonitoring renders the overlay with the monitoring
// component with kubectl's built-in kustomize too, when kubectl is
// installed, and expects the same objects as the library.
func TestKubectlKustomizeMonitoring(t *testing.T) {
	kubectl, err := exec.LookPath("kubectl")
	if err != nil {
		t.Skip("kubectl is not installed; TestManifestsMonitoring renders with the kustomize library")
	}
	dir := withComponent(t, "monitoring")
	out, err := exec.Command(kubectl, "kustomize", dir).Output()
	if err != nil {
		t.Fatalf("kubectl kustomize: %v", err)
	}
	lib, kc := decodeMonitoring(t, render(t, dir)), decodeMonitoring(t, out)
	a, _ := yaml.Marshal([]any{lib.base.ds, lib.base.cms, lib.pm, lib.rule, lib.dashboard})
	b, _ := yaml.Marshal([]any{kc.base.ds, kc.base.cms, kc.pm, kc.rule, kc.dashboard})
	if string(a) != string(b) {
		t.Errorf("kubectl kustomize and the kustomize library render different objects:\n%s\n---\n%s", a, b)
	}
}
