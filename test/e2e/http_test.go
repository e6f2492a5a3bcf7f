package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// The agent's default listeners (--metrics-address, --health-address). Each
// node namespace has its own loopback and addresses, so parallel tests do
// not collide.
const (
	metricsURL = "http://127.0.0.1:9441/metrics"
	healthURL  = "http://127.0.0.1:9442"
)

// httpClient returns a client whose connections are made inside ns: the
// socket is created on a thread in ns and used from anywhere afterwards.
func httpClient(ns *Netns) *http.Client {
	return &http.Client{
		Timeout: 5 * time.Second,
		Transport: &http.Transport{
			DisableKeepAlives: true,
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				var c net.Conn
				err := ns.Do(func() (err error) {
					var d net.Dialer
					c, err = d.DialContext(ctx, network, addr)
					return err
				})
				return c, err
			},
		},
	}
}

// httpGet fetches url from inside ns and returns the status code and body.
func httpGet(ns *Netns, url string) (int, string, error) {
	resp, err := httpClient(ns).Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), err
}

// Metrics is one scrape of /metrics.
type Metrics map[string]*dto.MetricFamily

// scrape fetches and parses /metrics from inside ns.
func scrape(t testing.TB, ns *Netns) Metrics {
	t.Helper()
	code, body, err := httpGet(ns, metricsURL)
	if err != nil || code != http.StatusOK {
		t.Fatalf("scrape %s in %s: status %d, %v\n%s", metricsURL, ns, code, err, body)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("parse /metrics: %v\n%s", err, body)
	}
	return fams
}

// Value returns the value of the series of name whose labels include
// labels ("k=v" pairs), and whether there is one. Several matches are summed.
func (m Metrics) Value(name string, labels ...string) (float64, bool) {
	fam, ok := m[name]
	if !ok {
		return 0, false
	}
	var sum float64
	found := false
	for _, s := range fam.GetMetric() {
		have := map[string]string{}
		for _, l := range s.GetLabel() {
			have[l.GetName()] = l.GetValue()
		}
		match := true
		for _, kv := range labels {
			k, v, _ := strings.Cut(kv, "=")
			if have[k] != v {
				match = false
			}
		}
		if !match {
			continue
		}
		found = true
		switch {
		case s.Counter != nil:
			sum += s.Counter.GetValue()
		case s.Gauge != nil:
			sum += s.Gauge.GetValue()
		case s.Histogram != nil:
			sum += float64(s.Histogram.GetSampleCount())
		case s.Untyped != nil:
			sum += s.Untyped.GetValue()
		}
	}
	return sum, found
}

// Must is Value that fails the test when the series is missing.
func (m Metrics) Must(t testing.TB, name string, labels ...string) float64 {
	t.Helper()
	v, ok := m.Value(name, labels...)
	if !ok {
		t.Fatalf("/metrics has no series %s%v", name, labels)
	}
	return v
}

// packets is the datapath counter of one event.
func (m Metrics) packets(t testing.TB, event string) float64 {
	t.Helper()
	return m.Must(t, "ip_masq_agent_datapath_packets_total", "event="+event)
}

// healthProbe fetches /healthz or /readyz from inside ns.
func healthProbe(ns *Netns, path string) (int, string) {
	code, body, err := httpGet(ns, healthURL+path)
	if err != nil {
		return 0, fmt.Sprintf("GET %s: %v", path, err)
	}
	return code, body
}

// waitProbe waits until path answers with code.
func waitProbe(ns *Netns, path string, code int, timeout time.Duration) error {
	return eventually(timeout, func() error {
		if got, body := healthProbe(ns, path); got != code {
			return fmt.Errorf("%s: status %d, want %d: %s", path, got, code, strings.TrimSpace(body))
		}
		return nil
	})
}
