package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"time"

	"github.com/ipmasq-ebpf/ip-masq-agent/loader"
	"github.com/ipmasq-ebpf/ip-masq-agent/maps"
)

// explainFlowJSON is one live mapping in the JSON output; its shape is
// documented in docs/json-output.md and shared with `debug -o json`.
type explainFlowJSON struct {
	Family           string  `json:"family"`
	Proto            string  `json:"proto"`
	Pod              string  `json:"pod"`
	Remote           string  `json:"remote"`
	Node             string  `json:"node"`
	State            string  `json:"state"`
	IdleSeconds      float64 `json:"idle_seconds"`
	ExpiresInSeconds float64 `json:"expires_in_seconds"`
	Replied          bool    `json:"replied"`
}

// newExplainFlowJSON describes f, idle and left seconds before it expires.
func newExplainFlowJSON(f maps.Flow, idle, left float64) explainFlowJSON {
	family := "ipv4"
	if f.Pod.Addr().Is6() {
		family = "ipv6"
	}
	return explainFlowJSON{
		Family: family, Proto: protoName(f.Proto), Pod: f.Pod.String(), Remote: f.Remote.String(), Node: f.Node.String(),
		State: f.State(), IdleSeconds: tenths(idle), ExpiresInSeconds: tenths(left), Replied: f.Replied,
	}
}

// tenths rounds seconds to a tenth, which is all a flow's timing means.
func tenths(s float64) float64 { return math.Round(s*10) / 10 }

// runExplain answers one explain query from the datapath pinned under
// pinPath, read-only, in text or (output "json") one JSON object whose
// flows are written one by one. It returns the exit code.
func runExplain(w, errw io.Writer, pinPath string, args []string, output string, to maps.Timeouts) int {
	q, err := parseExplainArgs(args)
	if err != nil {
		fmt.Fprintf(errw, "explain: %v\n", err)
		return 2
	}
	dp, err := loader.OpenPinned(pinPath)
	if err != nil {
		fmt.Fprintf(errw, "explain: %v\n", err)
		return 1
	}
	defer dp.Close()
	a, err := explain(dp, q)
	if err != nil {
		fmt.Fprintf(errw, "explain: %v\n", err)
		return 1
	}
	bw := bufio.NewWriter(w)
	defer bw.Flush()
	if output == "json" {
		err = writeExplainJSON(bw, a, to)
	} else {
		writeExplainText(bw, a, to)
	}
	if err != nil {
		fmt.Fprintf(errw, "explain: %v\n", err)
		return 1
	}
	return 0
}

func writeExplainJSON(w io.Writer, a explainAnswer, to maps.Timeouts) error {
	head, err := json.Marshal(a)
	if err != nil {
		return err
	}
	// The answer's fields, then "flows": [...] one flow at a time, so a
	// large result is never held as one document.
	w.Write(bytes.TrimSuffix(head, []byte("}")))
	io.WriteString(w, `,"flows":[`)
	now := maps.Now()
	for i, f := range a.flows {
		if i > 0 {
			io.WriteString(w, ",")
		}
		idle := max(now-f.LastSeen, 0)
		b, err := json.Marshal(newExplainFlowJSON(f, idle.Seconds(), expiresIn(f, to, now).Seconds()))
		if err != nil {
			return err
		}
		w.Write(b)
	}
	_, err = io.WriteString(w, "]}\n")
	return err
}

func writeExplainText(w io.Writer, a explainAnswer, to maps.Timeouts) {
	what := a.Proto
	if a.Port != nil {
		what = fmt.Sprintf("%s port %d", a.Proto, *a.Port)
	}
	fmt.Fprintf(w, "%s -> %s (%s, %s)\n", a.Source, a.Destination, a.Family, what)
	fmt.Fprintf(w, "New flows: %s\n", map[string]string{"masquerade": "MASQUERADED", "keep": "NOT masqueraded", "drop": "DROPPED"}[a.Verdict])
	fmt.Fprintf(w, "  because %s.\n", a.Reason)
	if a.DecidedBy != nil {
		fmt.Fprintf(w, "  Deciding prefix: %s (%s)", a.DecidedBy.Prefix, a.DecidedBy.List)
		if a.Overrides != nil {
			fmt.Fprintf(w, ", over %s (%s)", a.Overrides.Prefix, a.Overrides.List)
		}
		fmt.Fprintln(w)
	} else {
		fmt.Fprintf(w, "  Deciding prefix: none (outside every non-masquerade prefix)\n")
	}
	fmt.Fprintf(w, "  Source is a node address: %t\n", a.SourceIsNode)
	if a.SourceCIDRs != nil {
		fmt.Fprintf(w, "  Source inside --source-cidrs: %t\n", *a.SourceCIDRs)
	}
	if i := a.Interface; i != nil {
		addr := "none"
		if i.MasqueradeAddress != nil {
			addr = *i.MasqueradeAddress
		}
		fmt.Fprintf(w, "  Route: via %s (ifindex %d), managed: %t, masquerade address: %s\n", i.Name, i.Ifindex, i.Managed, addr)
	}
	if len(a.flows) == 0 {
		fmt.Fprintf(w, "Live mappings: none\n")
		return
	}
	fmt.Fprintf(w, "Live mappings (%d):\n", len(a.flows))
	now := maps.Now()
	for _, f := range a.flows {
		fmt.Fprintf(w, "  %s, idle %s, expires in %s\n", f, idle(now, f.LastSeen), (expiresIn(f, to, now) / time.Second * time.Second).String())
	}
}
