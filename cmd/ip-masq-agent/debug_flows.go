package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"strings"

	"github.com/ipmasq-ebpf/ip-masq-agent/maps"
)

// debugOptions are the flags of `debug` that choose which NAT entries it
// prints and how.
type debugOptions struct {
	pod, remote addrFilter
	state       string // "" for any
	limit       int    // entries printed at most per family; 0 for no limit
	json        bool   // one JSON object a line (docs/json-output.md)
	timeouts    maps.Timeouts
}

// flowStates are the values of --state.
var flowStates = []string{"opening", "established", "closing", "reset"}

// addDebugFlags defines debug's own flags on fs; the returned function
// reads them once fs is parsed.
func addDebugFlags(fs *flag.FlagSet) func() (debugOptions, error) {
	pod := fs.String("pod", "", "debug: only the flows of this pod address (ADDR or ADDR:PORT).")
	remote := fs.String("remote", "", "debug: only the flows and host reservations towards this remote (ADDR or ADDR:PORT).")
	state := fs.String("state", "", "debug: only the flows and host reservations in this state: "+strings.Join(flowStates, ", ")+".")
	limit := fs.Int("limit", 0, "debug: print at most this many NAT entries per family (0: all).")
	if fs.Lookup("o") == nil {
		fs.String("o", "text", "Output format of debug: text, or json for the NAT entries one object a line (docs/json-output.md).")
	}
	return func() (debugOptions, error) {
		var o debugOptions
		var errs []error
		var err error
		if o.pod, err = parseAddrFilter(*pod); err != nil {
			errs = append(errs, fmt.Errorf("--pod: %w", err))
		}
		if o.remote, err = parseAddrFilter(*remote); err != nil {
			errs = append(errs, fmt.Errorf("--remote: %w", err))
		}
		o.state = *state
		if o.state != "" && !containsString(flowStates, o.state) {
			errs = append(errs, fmt.Errorf("--state: %q is none of %s", o.state, strings.Join(flowStates, ", ")))
		}
		if o.limit = *limit; o.limit < 0 {
			errs = append(errs, fmt.Errorf("--limit: %d is negative", o.limit))
		}
		switch out := fs.Lookup("o").Value.String(); out {
		case "text":
		case "json":
			o.json = true
		default:
			errs = append(errs, fmt.Errorf("-o: %q is not text or json", out))
		}
		return o, errors.Join(errs...)
	}
}

func containsString(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// addrFilter matches an address, and a port when one was given.
type addrFilter struct {
	addr    netip.Addr // invalid: matches everything
	port    uint16
	hasPort bool
}

func parseAddrFilter(s string) (addrFilter, error) {
	if s == "" {
		return addrFilter{}, nil
	}
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return addrFilter{addr: ap.Addr().Unmap(), port: ap.Port(), hasPort: true}, nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return addrFilter{}, fmt.Errorf("%q is no address nor ADDR:PORT", s)
	}
	return addrFilter{addr: a.Unmap()}, nil
}

func (f addrFilter) set() bool { return f.addr.IsValid() }

func (f addrFilter) match(ap netip.AddrPort) bool {
	return !f.set() || ap.Addr() == f.addr && (!f.hasPort || ap.Port() == f.port)
}

func (o debugOptions) flowMatches(f maps.Flow) bool {
	return o.pod.match(f.Pod) && o.remote.match(f.Remote) && (o.state == "" || f.State() == o.state)
}

// A reservation has no pod: --pod hides them all.
func (o debugOptions) reservationMatches(r maps.Reservation) bool {
	return !o.pod.set() && o.remote.match(r.Remote) && (o.state == "" || r.State() == o.state)
}

func (o debugOptions) filtered() bool {
	return o.pod.set() || o.remote.set() || o.state != "" || o.limit > 0
}

// errLimit ends a walk once --limit entries were printed.
var errLimit = errors.New("limit reached")

// withoutLimit is err without the errLimit a --limit put into it.
func withoutLimit(err error) error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		var rest []error
		for _, e := range j.Unwrap() {
			if e = withoutLimit(e); e != nil {
				rest = append(rest, e)
			}
		}
		return errors.Join(rest...)
	}
	if errors.Is(err, errLimit) {
		return nil
	}
	return err
}

// debugTableJSON closes a family's entries in the JSON output.
type debugTableJSON struct {
	Kind             string  `json:"kind"` // "table"
	Family           string  `json:"family"`
	Capacity         int     `json:"capacity"`
	Entries          int     `json:"entries"`
	Flows            int     `json:"flows"`
	HostReservations int     `json:"host_reservations"`
	Orphans          int     `json:"orphans"`
	Shown            int     `json:"shown"`
	Complete         bool    `json:"complete"`
	Error            *string `json:"error"`
}

// debugFlowJSON is a flow object (explainFlowJSON) marked as such.
type debugFlowJSON struct {
	Kind string `json:"kind"` // "flow"
	explainFlowJSON
	ReplyHalf bool `json:"reply_half"`
}

type debugReservationJSON struct {
	Kind        string  `json:"kind"` // "reservation"
	Family      string  `json:"family"`
	Proto       string  `json:"proto"`
	Node        string  `json:"node"`
	Remote      string  `json:"remote"`
	State       string  `json:"state"`
	IdleSeconds float64 `json:"idle_seconds"`
}

// streamNAT prints one family's NAT table as NATTable.Walk hands the
// entries over, so that memory stays flat at any table size: text lines
// (unsorted) or one JSON object a line. It returns the walk's error.
func streamNAT(out io.Writer, name string, nat *maps.NATTable, o debugOptions) error {
	w := bufio.NewWriter(out)
	defer w.Flush()
	label := map[string]string{"ipv4": "IPv4", "ipv6": "IPv6"}[name]
	now := maps.Now()
	shown := 0
	var werr error // the first write error: stops the walk
	enc := json.NewEncoder(w)
	emit := func(v any, text string) {
		if werr != nil {
			return
		}
		shown++
		if o.json {
			werr = enc.Encode(v)
		} else {
			_, werr = io.WriteString(w, text)
		}
	}
	full := func() bool { return o.limit > 0 && shown >= o.limit }
	nat.Pace = func() error {
		if werr != nil {
			return werr
		}
		if full() {
			return errLimit
		}
		return nil
	}
	if !o.json {
		fmt.Fprintf(w, "\nNAT table (%s) flows, as read:\n", label)
	}
	reservations := 0
	s, err := nat.Walk(maps.Visitor{
		Flow: func(f maps.Flow) {
			if full() || !o.flowMatches(f) {
				return
			}
			sec := float64(max(now-f.LastSeen, 0)) / 1e9
			left := expiresIn(f, o.timeouts, now).Seconds()
			note := ""
			if !f.HasIn {
				note = " (reply half missing)"
			}
			emit(debugFlowJSON{"flow", newExplainFlowJSON(f, sec, left), f.HasIn},
				fmt.Sprintf("  %s %s%s\n", f, idle(now, f.LastSeen), note))
		},
		Reservation: func(r maps.Reservation) {
			if full() || !o.reservationMatches(r) {
				return
			}
			if reservations == 0 && !o.json {
				fmt.Fprintf(w, "Host reservations (%s, node tuples kept from pod mappings):\n", label)
			}
			reservations++
			emit(debugReservationJSON{"reservation", name, protoName(r.Proto), r.Host().String(), r.Remote.String(), r.State(),
				tenths(float64(max(now-r.LastSeen, 0)) / 1e9)},
				fmt.Sprintf("  %s -> %s %s %s %s\n", r.Host(), r.Remote, protoName(r.Proto), r.State(), idle(now, r.LastSeen)))
		},
	})
	nat.Pace = nil
	err = withoutLimit(err)
	if werr != nil {
		return werr
	}
	if o.json {
		t := debugTableJSON{Kind: "table", Family: name, Capacity: nat.Capacity(), Entries: s.Entries, Flows: flowCount(s),
			HostReservations: s.Reserved, Orphans: s.Orphans, Shown: shown, Complete: err == nil && s.Complete}
		if err != nil {
			msg := err.Error()
			t.Error = &msg
		}
		if e := enc.Encode(t); e != nil {
			return e
		}
		return err
	}
	fmt.Fprintf(w, "NAT table (%s): %d of %d entries in use, %d flows, %d host reservations, %d reply halves without their flow\n",
		label, s.Entries, nat.Capacity(), flowCount(s), s.Reserved, s.Orphans)
	if o.filtered() {
		limited := ""
		if full() {
			limited = ", --limit " + strconv.Itoa(o.limit) + " reached: the counts above are of the part read"
		}
		fmt.Fprintf(w, "Shown: %d entries matching the filters%s\n", shown, limited)
	}
	return err
}

// flowCount is how many flows a walk found.
func flowCount(s maps.PassStats) int {
	n := 0
	for _, c := range s.Flows {
		n += c
	}
	return n
}
