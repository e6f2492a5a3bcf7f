package loader

import (
	"encoding/binary"
	"errors"
	"fmt"
	"reflect"
)

var nativeEndian = binary.NativeEndian

// natLayout is where the fields of a NAT table key and value of one family
// sit, in this build's layout (taken from the generated types, so a new
// layout moves them along).
type natLayout struct {
	saddr, daddr, sport, dport, proto, dir uintptr // key
	addr, port, kind                       uintptr // value
	addrLen                                int
}

var (
	nat4Layout = layoutOf(BPFIpmNatKey{}, BPFIpmNatEntry{}, 4)
	nat6Layout = layoutOf(BPFIpmNat6Key{}, BPFIpmNat6Entry{}, 16)
)

// layoutOf reads the offsets of a NAT key and value type's fields by
// name; both families' generated types name them alike.
func layoutOf(key, value any, addrLen int) natLayout {
	off := func(v any, name string) uintptr {
		f, ok := reflect.TypeOf(v).FieldByName(name)
		if !ok {
			panic(fmt.Sprintf("%T has no field %s", v, name))
		}
		return f.Offset
	}
	return natLayout{
		saddr: off(key, "Saddr"), daddr: off(key, "Daddr"), sport: off(key, "Sport"), dport: off(key, "Dport"),
		proto: off(key, "Proto"), dir: off(key, "Dir"),
		addr: off(value, "Addr"), port: off(value, "Port"), kind: off(value, "Kind"), addrLen: addrLen,
	}
}

// replyKey is the key of the reply half of the egress half k -> v: remote
// -> node address and port (for ICMP the egress key's dport is 0, and so is
// the reply's sport).
func (l natLayout) replyKey(k, v []byte) []byte {
	r := make([]byte, len(k))
	n := uintptr(l.addrLen)
	copy(r[l.saddr:l.saddr+n], k[l.daddr:l.daddr+n])
	copy(r[l.daddr:l.daddr+n], v[l.addr:l.addr+n])
	copy(r[l.sport:l.sport+2], k[l.dport:l.dport+2])
	copy(r[l.dport:l.dport+2], v[l.port:l.port+2])
	r[l.proto] = k[l.proto]
	r[l.dir] = byte(BPFIpmDirIPM_DIR_INGRESS)
	return r
}

// natFlows reads a NAT table as flows: each egress half of a pod mapping
// with its reply half. A reply half without its egress half is left behind
// (the agent would remove it; a mapping the old programs were creating at
// that instant is copied again later, complete). Entries of other kinds
// stand alone.
func natFlows(addrLen int) groupReader {
	l := nat4Layout
	if addrLen == 16 {
		l = nat6Layout
	}
	return func(m *migration, fn func(group)) error {
		var errs []error
		upgrade := func(v []byte) []byte {
			nv, err := upgradeValue(m.name, m.from, v)
			if err == nil && len(nv) != int(m.new.ValueSize()) {
				err = fmt.Errorf("value of %d bytes after upgrade, want %d", len(nv), m.new.ValueSize())
			}
			if err != nil {
				errs = append(errs, err)
				return nil
			}
			return clone(nv)
		}
		rv := make([]byte, m.old.ValueSize())
		err := readAll(m.old, func(k, v []byte) {
			out := upgrade(v)
			if out == nil {
				return
			}
			masq := BPFIpmKind(out[l.kind]) == BPFIpmKindIPM_KIND_MASQ
			if masq && BPFIpmDir(k[l.dir]) == BPFIpmDirIPM_DIR_INGRESS {
				return // copied with its egress half
			}
			created, last := stamps(out)
			g := group{keys: [][]byte{clone(k)}, values: [][]byte{out}, lastUsed: max(created, last), created: created}
			if masq {
				rk := l.replyKey(k, out)
				if m.old.Lookup(rk, rv) != nil {
					return // being created or removed: not a flow
				}
				in := upgrade(rv)
				if in == nil {
					return
				}
				_, inLast := stamps(in)
				g.keys = [][]byte{rk, g.keys[0]}
				g.values = [][]byte{in, out}
				g.lastUsed = max(g.lastUsed, inLast)
			}
			fn(g)
		})
		return errors.Join(append(errs, err)...)
	}
}
