package deploy

import (
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/ipmasq-ebpf/ip-masq-agent/loader"
	"github.com/ipmasq-ebpf/ip-masq-agent/maps"
)

// prometheusSeries are the series Prometheus itself writes for each target.
var prometheusSeries = []string{"up"}

// agentMetricNames reads the names of the metrics that the agent registers
// from cmd/ip-masq-agent's source: the Namespace and Name of every
// prometheus *Opts literal (with the series names of a histogram or
// summary), the first argument of every call of a function that builds
// such a literal from its first parameter, and every
// metricsNamespace+"_name" given to NewDesc.
func agentMetricNames(t *testing.T) map[string]bool {
	t.Helper()
	paths, err := filepath.Glob("../cmd/ip-masq-agent/*.go")
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	var files []*ast.File
	namespace := ""
	for _, p := range paths {
		if strings.HasSuffix(p, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, p, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, f)
		if o := f.Scope.Lookup("metricsNamespace"); o != nil && o.Kind == ast.Con {
			namespace = stringLit(t, o.Decl.(*ast.ValueSpec).Values[0])
		}
	}
	if namespace == "" {
		t.Fatal("no metricsNamespace constant in cmd/ip-masq-agent")
	}
	isNamespace := func(e ast.Expr) bool { id, ok := e.(*ast.Ident); return ok && id.Name == "metricsNamespace" }
	// optsName returns the kind of a prometheus *Opts literal in the
	// agent's namespace and the expression it gives as Name.
	optsName := func(n *ast.CompositeLit) (kind string, name ast.Expr) {
		sel, ok := n.Type.(*ast.SelectorExpr)
		if !ok || !strings.HasSuffix(sel.Sel.Name, "Opts") {
			return "", nil
		}
		var ns bool
		for _, e := range n.Elts {
			kv, ok := e.(*ast.KeyValueExpr)
			if !ok {
				continue
			}
			switch kv.Key.(*ast.Ident).Name {
			case "Namespace":
				ns = isNamespace(kv.Value)
			case "Name":
				name = kv.Value
			}
		}
		if !ns {
			return "", nil
		}
		return sel.Sel.Name, name
	}
	// Builders are the functions that put their first parameter in as the
	// Name of such a literal; a call of one with a string names a metric.
	builders := map[string]string{}
	for _, f := range files {
		for _, d := range f.Decls {
			fn, ok := d.(*ast.FuncDecl)
			if !ok || len(fn.Type.Params.List) == 0 || len(fn.Type.Params.List[0].Names) == 0 || fn.Body == nil {
				continue
			}
			param := fn.Type.Params.List[0].Names[0].Name
			ast.Inspect(fn.Body, func(n ast.Node) bool {
				if lit, ok := n.(*ast.CompositeLit); ok {
					if kind, name := optsName(lit); kind != "" {
						if id, ok := name.(*ast.Ident); ok && id.Name == param {
							builders[fn.Name.Name] = kind
						}
					}
				}
				return true
			})
		}
	}
	names := map[string]bool{}
	add := func(kind string, name ast.Expr) {
		if _, ok := name.(*ast.BasicLit); !ok {
			return
		}
		full := namespace + "_" + stringLit(t, name)
		switch kind {
		case "HistogramOpts":
			names[full+"_bucket"], names[full+"_sum"], names[full+"_count"] = true, true, true
		case "SummaryOpts":
			names[full], names[full+"_sum"], names[full+"_count"] = true, true, true
		default:
			names[full] = true
		}
	}
	for _, f := range files {
		ast.Inspect(f, func(n ast.Node) bool {
			switch n := n.(type) {
			case *ast.CompositeLit:
				if kind, name := optsName(n); kind != "" {
					add(kind, name)
				}
			case *ast.CallExpr:
				if id, ok := n.Fun.(*ast.Ident); ok && builders[id.Name] != "" && len(n.Args) > 0 {
					add(builders[id.Name], n.Args[0])
				}
			case *ast.BinaryExpr:
				if n.Op == token.ADD && isNamespace(n.X) {
					if _, ok := n.Y.(*ast.BasicLit); ok {
						names[namespace+stringLit(t, n.Y)] = true
					}
				}
			}
			return true
		})
	}
	// The reader must find what the README lists, else it reads nothing.
	for _, n := range []string{"ip_masq_agent_datapath_packets_total", "ip_masq_agent_config_rejected",
		"ip_masq_agent_attach_repairs_total", "ip_masq_agent_config_sync_duration_seconds_bucket"} {
		if !names[n] {
			t.Fatalf("found %d metric names in cmd/ip-masq-agent, but not %s", len(names), n)
		}
	}
	return names
}

func stringLit(t *testing.T, e ast.Expr) string {
	t.Helper()
	lit, ok := e.(*ast.BasicLit)
	if !ok || lit.Kind != token.STRING {
		t.Fatalf("not a string literal: %T", e)
	}
	s, err := strconv.Unquote(lit.Value)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

var (
	promqlString   = regexp.MustCompile(`"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|` + "`[^`]*`")
	promqlMatchers = regexp.MustCompile(`\{[^}]*\}`)
	promqlRange    = regexp.MustCompile(`\[[^\]]*\]`)
	promqlGrouping = regexp.MustCompile(`\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)`)
	promqlIdent    = regexp.MustCompile(`[A-Za-z_:][A-Za-z0-9_:]*`)
	labelValues    = regexp.MustCompile(`^label_values\(\s*([A-Za-z_:][A-Za-z0-9_:]*)\s*,\s*\w+\s*\)$`)
)

// promqlKeywords are the words of PromQL that are neither functions nor
// metric names; aggregations are told by what follows them.
var promqlKeywords = map[string]bool{
	"and": true, "or": true, "unless": true, "bool": true, "offset": true, "inf": true, "nan": true,
	"sum": true, "min": true, "max": true, "avg": true, "count": true, "group": true, "stddev": true,
	"stdvar": true, "topk": true, "bottomk": true, "quantile": true, "count_values": true,
}

// metricNames returns the metric names a PromQL expression selects: it
// drops strings, label matchers, ranges and grouping clauses, and keeps
// the identifiers that are not keywords, not functions (followed by "(")
// and not the unit of a number.
func metricNames(expr string) []string {
	if m := labelValues.FindStringSubmatch(strings.TrimSpace(expr)); m != nil {
		return []string{m[1]} // Grafana's label_values(metric, label)
	}
	e := promqlString.ReplaceAllString(expr, `""`)
	e = promqlMatchers.ReplaceAllString(e, " ")
	e = promqlRange.ReplaceAllString(e, " ")
	e = promqlGrouping.ReplaceAllString(e, " ")
	var out []string
	for _, loc := range promqlIdent.FindAllStringIndex(e, -1) {
		word := e[loc[0]:loc[1]]
		if loc[0] > 0 && strings.ContainsRune("0123456789.$", rune(e[loc[0]-1])) {
			continue // 1e3, 5m, a Grafana variable
		}
		if strings.HasPrefix(strings.TrimLeft(e[loc[1]:], " \t\n"), "(") || promqlKeywords[strings.ToLower(word)] {
			continue
		}
		if !slices.Contains(out, word) {
			out = append(out, word)
		}
	}
	return out
}

// TestMetricNames: the extraction finds the names and only the names.
func TestMetricNames(t *testing.T) {
	for _, c := range []struct {
		expr string
		want []string
	}{
		{`sum by (family, event) (rate(a_total{node=~"$node", event="x(y)"}[$__rate_interval]))`, []string{"a_total"}},
		{`a / b > 0.9`, []string{"a", "b"}},
		{`time() - (c > 0) > 900`, []string{"c"}},
		{`histogram_quantile(0.99, sum by (le, table) (rate(h_bucket[5m])))`, []string{"h_bucket"}},
		{`increase(x[15m] offset 1h) > 0 and on(node) y unless ignoring(a) group_left(b) z`, []string{"x", "y", "z"}},
		{`count by (version) (m) or vector(1e3)`, []string{"m"}},
		{`max without (pod) (n) > bool 1`, []string{"n"}},
		{`label_values(ip_masq_agent_build_info, node)`, []string{"ip_masq_agent_build_info"}},
	} {
		if got := metricNames(c.expr); !slices.Equal(got, c.want) {
			t.Errorf("metricNames(%q) = %q, want %q", c.expr, got, c.want)
		}
	}
}

// TestMonitoringUsesRealMetrics: every metric name in the alerts and the
// dashboard is one the agent exports, and every event label value is a
// datapath counter, so a renamed metric or counter fails here rather than
// leaving an alert that can never fire.
func TestMonitoringUsesRealMetrics(t *testing.T) {
	known := agentMetricNames(t)
	for _, n := range prometheusSeries {
		known[n] = true
	}
	events := map[string]bool{}
	for _, f := range maps.Fields(loader.BPFIpmCounters{}) {
		events[f.Name] = true
	}

	var exprs []dashboardQuery
	for _, r := range alerts(t, renderMonitoring(t).rule.Spec.Groups) {
		exprs = append(exprs, dashboardQuery{"alert " + r.Alert, r.Expr})
	}
	d := readDashboard(t)
	exprs = append(exprs, d.queries(t)...)
	for _, v := range d.Templating.List {
		if v.Type == "query" {
			exprs = append(exprs, dashboardQuery{"variable " + v.Name, v.Definition})
		}
	}

	eventMatcher := regexp.MustCompile(`event\s*(=~?|!~?)\s*"([^"]*)"`)
	used := map[string]bool{}
	for _, q := range exprs {
		names := metricNames(q.expr)
		if len(names) == 0 {
			t.Errorf("%s: no metric in %q", q.where, q.expr)
		}
		for _, n := range names {
			used[n] = true
			if !known[n] {
				t.Errorf("%s: %s is not a metric of the agent (%q)", q.where, n, q.expr)
			}
		}
		for _, m := range eventMatcher.FindAllStringSubmatch(q.expr, -1) {
			for _, ev := range strings.Split(m[2], "|") {
				if !events[ev] {
					t.Errorf("%s: event %q is not a datapath counter (%q)", q.where, ev, q.expr)
				}
			}
		}
	}
	// What the dashboard and the alerts are there to show.
	for _, n := range []string{"ip_masq_agent_datapath_packets_total", "ip_masq_agent_nat_entries",
		"ip_masq_agent_nat_capacity_entries", "ip_masq_agent_nat_flows", "ip_masq_agent_nat_host_reservations",
		"ip_masq_agent_config_syncs_total", "ip_masq_agent_config_rejected", "ip_masq_agent_interface_attached",
		"ip_masq_agent_attach_repairs_total", "ip_masq_agent_expiry_pass_duration_seconds_bucket",
		"ip_masq_agent_expiry_failures_total"} {
		if !used[n] {
			t.Errorf("neither the alerts nor the dashboard use %s", n)
		}
	}
}
