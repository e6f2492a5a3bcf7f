package k8s

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netns"
	"sigs.k8s.io/yaml"

	"github.com/ipmasq-ebpf/ip-masq-agent/test/e2e"
)

// promDeadline bounds each wait on the real Prometheus: its start, a few
// scrapes, the first evaluation of every rule, data in every panel. A 1 s
// scrape interval needs seconds; the margin is for a loaded machine.
const promDeadline = 60 * time.Second

// noDataExpected are the dashboard queries (panel title and refId) that
// return nothing on a healthy cluster, with the reason. Everything else
// must return a series: the agent exports its counters at 0.
var noDataExpected = map[string]string{}

// prometheus is a Prometheus server that the test started in the node's
// network namespace, and an HTTP client whose connections are made there.
type prometheus struct {
	base   string // http://127.0.0.1:port
	client *http.Client
	log    string // its log file
	rules  string // the rule file it loads
}

// startPrometheus starts Debian's prometheus in the node's network
// namespace, scraping the agent at the node's address every second as the
// job of deploy/monitoring's PodMonitor (job and node label) and loading
// the rule groups of its PrometheusRule; t.Cleanup kills it, then the
// temporary directory with its storage goes.
func (c *cluster) startPrometheus(t *testing.T, nodeName, pod string) *prometheus {
	t.Helper()
	bin, err := exec.LookPath("prometheus")
	if err != nil {
		t.Fatal("prometheus is not installed (make setup installs Debian's prometheus package)")
	}
	node := c.nodeNetns(t)
	dir := t.TempDir()
	writeRuleFile(t, filepath.Join(c.repo, "deploy", "monitoring", "prometheusrule.yml"), filepath.Join(dir, "rules.yml"))
	cfg := map[string]any{
		"global":     map[string]any{"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
		"rule_files": []string{filepath.Join(dir, "rules.yml")},
		"scrape_configs": []any{map[string]any{
			// The job label the PodMonitor's jobLabel gives (the pods'
			// k8s-app), and the labels of its relabelings and of the
			// Operator, which the alerts and the dashboard select by.
			"job_name": dsName,
			"static_configs": []any{map[string]any{
				"targets": []string{hostPort(e2e.NodeIP.String(), 9441)},
				"labels":  map[string]string{"node": nodeName, "namespace": "kube-system", "pod": pod},
			}},
		}},
	}
	b, err := yaml.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "prometheus.yml"), b, 0o644); err != nil {
		t.Fatal(err)
	}

	// A free port of the node's loopback (another run may hold 9090).
	var port int
	if err := node.Do(func() error {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		port = l.Addr().(*net.TCPAddr).Port
		return l.Close()
	}); err != nil {
		t.Fatalf("node: free port: %v", err)
	}
	logPath := filepath.Join(dir, "prometheus.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	// nsenter without a PID namespace execs prometheus: the child is it.
	cmd := exec.Command("nsenter", "-t", c.env["IPM_K8S_HOLDER_PID"], "-n", "--", bin,
		"--config.file="+filepath.Join(dir, "prometheus.yml"),
		"--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+hostPort("127.0.0.1", port))
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Registered after t.TempDir: runs before the directory is removed.
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	p := &prometheus{
		base:  "http://" + hostPort("127.0.0.1", port),
		log:   logPath,
		rules: filepath.Join(dir, "rules.yml"),
		client: &http.Client{Timeout: e2e.ProbeTimeout, Transport: &http.Transport{
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				var conn net.Conn
				err := node.Do(func() (err error) {
					conn, err = (&net.Dialer{Timeout: e2e.ProbeTimeout}).DialContext(ctx, network, addr)
					return err
				})
				return conn, err
			},
		}},
	}
	if _, ok := waitFor(promDeadline, func() bool {
		resp, err := p.client.Get(p.base + "/-/ready")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}); !ok {
		p.fatal(t, "prometheus not ready within %v", promDeadline)
	}
	return p
}

func hostPort(host string, port int) string { return net.JoinHostPort(host, strconv.Itoa(port)) }

// nodeNetns opens the node's network namespace; t.Cleanup closes it.
func (c *cluster) nodeNetns(t *testing.T) *e2e.Netns {
	t.Helper()
	h, err := netns.GetFromPath("/proc/" + c.env["IPM_K8S_HOLDER_PID"] + "/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return &e2e.Netns{Name: c.env["IPM_K8S_NODE_NETNS"], Role: "node", Handle: h, Addr: e2e.NodeIP}
}

// fatal fails the test with the end of Prometheus's log.
func (p *prometheus) fatal(t *testing.T, format string, args ...any) {
	t.Helper()
	b, _ := os.ReadFile(p.log)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > 20 {
		lines = lines[len(lines)-20:]
	}
	t.Fatalf(format+"\nprometheus log:\n%s", append(args, strings.Join(lines, "\n"))...)
}

// get decodes the data of an API response (/api/v1/...) into out.
func (p *prometheus) get(path string, params url.Values, out any) error {
	resp, err := p.client.Get(p.base + path + "?" + params.Encode())
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var r struct {
		Status string          `json:"status"`
		Error  string          `json:"error"`
		Data   json.RawMessage `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		return fmt.Errorf("%s: %d: %v", path, resp.StatusCode, err)
	}
	if r.Status != "success" {
		return fmt.Errorf("%s %s: %s", path, params.Encode(), r.Error)
	}
	return json.Unmarshal(r.Data, out)
}

// sample is one series of an instant vector.
type sample struct {
	Metric map[string]string `json:"metric"`
	Value  [2]any            `json:"value"` // [time, "value"]
}

// query evaluates expr now; it must be an instant vector.
func (p *prometheus) query(expr string) ([]sample, error) {
	var d struct {
		ResultType string   `json:"resultType"`
		Result     []sample `json:"result"`
	}
	if err := p.get("/api/v1/query", url.Values{"query": {expr}}, &d); err != nil {
		return nil, err
	}
	if d.ResultType != "vector" {
		return nil, fmt.Errorf("%q: result type %s, want vector", expr, d.ResultType)
	}
	return d.Result, nil
}

// writeRuleFile writes the rule groups of a PrometheusRule as a rule file
// of Prometheus, which spells them the same.
func writeRuleFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	var pr struct {
		Spec struct {
			Groups []any `json:"groups"`
		} `json:"spec"`
	}
	if err := yaml.Unmarshal(b, &pr); err != nil {
		t.Fatalf("%s: %v", from, err)
	}
	if len(pr.Spec.Groups) == 0 {
		t.Fatalf("%s: no rule groups", from)
	}
	out, err := yaml.Marshal(map[string]any{"groups": pr.Spec.Groups})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, out, 0o644); err != nil {
		t.Fatal(err)
	}
}

// ruleGroups reads the rule groups of the rule file: name and rule count.
func ruleGroups(t *testing.T, path string) map[string]int {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var f struct {
		Groups []struct {
			Name  string `json:"name"`
			Rules []any  `json:"rules"`
		} `json:"groups"`
	}
	if err := yaml.Unmarshal(b, &f); err != nil {
		t.Fatal(err)
	}
	out := map[string]int{}
	for _, g := range f.Groups {
		out[g.Name] = len(g.Rules)
	}
	return out
}

// panelQuery is one query of a dashboard panel.
type panelQuery struct{ where, expr string }

// dashboardQueries reads the panel queries of deploy/monitoring/dashboard.json
// (rows hold panels too).
func (c *cluster) dashboardQueries(t *testing.T) []panelQuery {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(c.repo, "deploy", "monitoring", "dashboard.json"))
	if err != nil {
		t.Fatal(err)
	}
	type panel struct {
		Type    string `json:"type"`
		Title   string `json:"title"`
		Targets []struct {
			Expr  string `json:"expr"`
			RefID string `json:"refId"`
		} `json:"targets"`
		Panels []json.RawMessage `json:"panels"`
	}
	var d struct {
		Panels []json.RawMessage `json:"panels"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("dashboard.json: %v", err)
	}
	var out []panelQuery
	var walk func([]json.RawMessage)
	walk = func(ps []json.RawMessage) {
		for _, raw := range ps {
			var p panel
			if err := json.Unmarshal(raw, &p); err != nil {
				t.Fatalf("dashboard.json: %v", err)
			}
			walk(p.Panels)
			for _, q := range p.Targets {
				out = append(out, panelQuery{p.Title + " " + q.RefID, q.Expr})
			}
		}
	}
	walk(d.Panels)
	if len(out) == 0 {
		t.Fatal("dashboard.json: no queries")
	}
	return out
}

// checkMonitoring runs deploy/monitoring against the agent: a real
// Prometheus scrapes it, evaluates every alert rule without an error and
// without an alert, and every panel of the dashboard shows data.
func (c *cluster) checkMonitoring(t *testing.T) {
	pod, _ := c.agentPod(t)
	nodeName := c.mustKubectl(t, "-n", "kube-system", "get", "pod", pod, "-o", "jsonpath={.spec.nodeName}")
	p := c.startPrometheus(t, nodeName, pod)
	start := time.Now()

	// A few scrapes, all of them up.
	job := `up{job="` + dsName + `"}`
	var last string
	if _, ok := waitFor(promDeadline, func() bool {
		s, err := p.query(`count_over_time(` + job + `[5m]) >= 5 and ` + job + ` == 1`)
		last = fmt.Sprint(s, err)
		return err == nil && len(s) == 1
	}); !ok {
		var targets any
		p.get("/api/v1/targets", nil, &targets)
		p.fatal(t, "no five good scrapes of the agent within %v: %s; targets: %v", promDeadline, last, targets)
	}
	t.Logf("Prometheus scraped the agent 5 times, %v after its start", time.Since(start).Round(100*time.Millisecond))

	// Every rule group loaded and every rule evaluated without an error.
	want := ruleGroups(t, p.rules)
	type ruleState struct {
		Name, Health, LastError string
	}
	var rules struct {
		Groups []struct {
			Name  string      `json:"name"`
			Rules []ruleState `json:"rules"`
		} `json:"groups"`
	}
	var problems []string
	if _, ok := waitFor(promDeadline, func() bool {
		problems = nil
		if err := p.get("/api/v1/rules", nil, &rules); err != nil {
			problems = append(problems, err.Error())
			return false
		}
		seen := map[string]int{}
		for _, g := range rules.Groups {
			seen[g.Name] = len(g.Rules)
			for _, r := range g.Rules {
				if r.Health != "ok" {
					problems = append(problems, fmt.Sprintf("%s/%s: health %q %s", g.Name, r.Name, r.Health, r.LastError))
				}
			}
		}
		for name, n := range want {
			if seen[name] != n {
				problems = append(problems, fmt.Sprintf("group %s: %d rules loaded, the PrometheusRule has %d", name, seen[name], n))
			}
		}
		return len(problems) == 0
	}); !ok {
		p.fatal(t, "rules within %v:\n%s", promDeadline, strings.Join(problems, "\n"))
	}
	n := 0
	for _, g := range want {
		n += g
	}
	t.Logf("%d rule groups, %d alert rules loaded and evaluated, health ok", len(want), n)

	// The dashboard's node variable, label_values(ip_masq_agent_build_info,
	// node), as Grafana asks for it: the node of the agent's pod.
	var nodes []string
	if err := p.get("/api/v1/label/node/values", url.Values{"match[]": {"ip_masq_agent_build_info"}}, &nodes); err != nil {
		t.Fatal(err)
	}
	if len(nodes) != 1 || nodes[0] != nodeName {
		t.Fatalf("the dashboard's node variable offers %q, want [%s]", nodes, nodeName)
	}
	// Grafana's variables as a user who picked the node sees them;
	// $__rate_interval as deploy/monitoring_test.go gives it to promtool.
	vars := strings.NewReplacer(`$__rate_interval`, `5m`, `$node`, regexp.QuoteMeta(nodeName))
	queries := c.dashboardQueries(t)
	empty := map[string]string{}
	results := map[string][]sample{}
	waitFor(promDeadline, func() bool {
		for _, q := range queries {
			if _, done := results[q.where]; done {
				continue
			}
			e := vars.Replace(q.expr)
			s, err := p.query(e)
			switch {
			case err != nil:
				empty[q.where] = err.Error()
			case len(s) == 0:
				empty[q.where] = "no data: " + e
			case allNaN(s):
				// histogram_quantile of buckets that did not move: Grafana
				// draws nothing.
				empty[q.where] = fmt.Sprintf("only NaN in %d series: %s", len(s), e)
			default:
				delete(empty, q.where)
				results[q.where] = s
			}
		}
		for _, q := range queries {
			if _, listed := noDataExpected[q.where]; !listed && results[q.where] == nil {
				return false
			}
		}
		return true
	})
	for _, q := range queries {
		if s, ok := results[q.where]; ok {
			eg := s[0]
			for _, x := range s {
				if x.Value[1] != "NaN" {
					eg = x
					break
				}
			}
			t.Logf("panel %s: %d series, e.g. %v = %v", q.where, len(s), eg.Metric, eg.Value[1])
			if why, listed := noDataExpected[q.where]; listed {
				t.Errorf("panel %s has data, but noDataExpected says %q: take it off the list", q.where, why)
			}
			continue
		}
		if why, listed := noDataExpected[q.where]; listed {
			t.Logf("panel %s: no data, as expected on a healthy cluster: %s", q.where, why)
			continue
		}
		t.Errorf("panel %s: %s", q.where, empty[q.where])
	}
	for where := range noDataExpected {
		if _, ok := results[where]; !ok && empty[where] == "" {
			t.Errorf("noDataExpected names %q, which is no query of the dashboard", where)
		}
	}

	// Nothing is wrong on this node: no alert pending or firing.
	var alerts struct {
		Alerts []struct {
			Labels map[string]string `json:"labels"`
			State  string            `json:"state"`
		} `json:"alerts"`
	}
	if err := p.get("/api/v1/alerts", nil, &alerts); err != nil {
		t.Fatal(err)
	}
	for _, a := range alerts.Alerts {
		t.Errorf("alert %s %s on a healthy cluster: %v", a.Labels["alertname"], a.State, a.Labels)
	}
}

// allNaN tells whether every value of the vector is NaN.
func allNaN(s []sample) bool {
	for _, x := range s {
		if v, _ := x.Value[1].(string); v != "NaN" {
			return false
		}
	}
	return true
}
