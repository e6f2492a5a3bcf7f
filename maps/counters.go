package maps

import (
	"fmt"
	"reflect"

	"github.com/cilium/ebpf"

	"github.com/ipmasq-ebpf/ip-masq-agent/loader"
)

// Counters is the per-CPU ipm_stats map.
type Counters struct{ m *ebpf.Map }

func NewCounters(d *loader.Datapath) *Counters { return &Counters{m: d.Maps.IpmStats} }

// Family selects the counters of one address family (the map's key).
type Family uint32

const (
	IPv4 Family = 0
	IPv6 Family = 1
)

// Read returns the counters of both families summed over all CPUs.
func (c *Counters) Read() (loader.BPFIpmCounters, error) {
	var sum loader.BPFIpmCounters
	for _, f := range []Family{IPv4, IPv6} {
		v, err := c.ReadFamily(f)
		if err != nil {
			return sum, err
		}
		add(&sum, v)
	}
	return sum, nil
}

// ReadFamily returns one family's counters summed over all CPUs.
func (c *Counters) ReadFamily(f Family) (loader.BPFIpmCounters, error) {
	var perCPU []loader.BPFIpmCounters
	var sum loader.BPFIpmCounters
	if err := c.m.Lookup(uint32(f), &perCPU); err != nil {
		return sum, fmt.Errorf("read counters: %w", err)
	}
	for _, cpu := range perCPU {
		add(&sum, cpu)
	}
	return sum, nil
}

// add adds every counter of v to sum.
func add(sum *loader.BPFIpmCounters, v loader.BPFIpmCounters) {
	total := reflect.ValueOf(sum).Elem()
	val := reflect.ValueOf(v)
	for i := 0; i < val.NumField(); i++ {
		if f := total.Field(i); f.CanSet() && f.Kind() == reflect.Uint64 {
			f.SetUint(f.Uint() + val.Field(i).Uint())
		}
	}
}

// Fields lists the counters by their C names (for metrics and the debug
// command), in declaration order.
func Fields(c loader.BPFIpmCounters) []Field {
	v := reflect.ValueOf(c)
	t := v.Type()
	var out []Field
	for i := 0; i < t.NumField(); i++ {
		if t.Field(i).Type.Kind() != reflect.Uint64 {
			continue
		}
		out = append(out, Field{Name: snake(t.Field(i).Name), Value: v.Field(i).Uint()})
	}
	return out
}

// Field is one named counter.
type Field struct {
	Name  string
	Value uint64
}

// snake turns a generated Go field name (EgressNewFlow) back into the C name
// (egress_new_flow).
func snake(s string) string {
	var out []byte
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 'A' && c <= 'Z' {
			if i > 0 {
				out = append(out, '_')
			}
			c += 'a' - 'A'
		}
		out = append(out, c)
	}
	return string(out)
}
