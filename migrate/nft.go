package migrate

import (
	"errors"
	"fmt"
	"math/bits"
	"net/netip"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"github.com/google/nftables/xt"
	"golang.org/x/sys/unix"
)

// NFT is the iptables-nft backend: iptables-nft keeps the nat table as the
// nf_tables table "nat" of family ip (ip6), with a base chain POSTROUTING and
// a regular chain per user chain. It is read and changed over netlink.
type NFT struct {
	opts []nftables.ConnOption
}

// NewNFT returns the backend; opts select another network namespace
// (nftables.WithNetNSFd) in tests.
func NewNFT(opts ...nftables.ConnOption) *NFT { return &NFT{opts: opts} }

// Name implements Backend.
func (n *NFT) Name() string { return BackendNFT }

var nftFamilies = map[Family]nftables.TableFamily{IPv4: nftables.TableFamilyIPv4, IPv6: nftables.TableFamilyIPv6}

// Remove implements Backend. Listing chains creates nothing; the removal is
// one nf_tables transaction, so it happens whole or not at all (for example
// when a rule of another chain still jumps to the chain).
func (n *NFT) Remove(family Family, chain string) (*Removal, error) {
	c, err := nftables.New(n.opts...)
	if err != nil {
		return nil, fmt.Errorf("open nf_tables: %w", err)
	}
	chains, err := c.ListChainsOfTableFamily(nftFamilies[family])
	if err != nil {
		if unsupported(err) {
			return nil, fmt.Errorf("%w: the kernel has no nf_tables (%v)", ErrUnavailable, err)
		}
		return nil, fmt.Errorf("list nf_tables chains: %w", err)
	}
	var masq, post *nftables.Chain
	for _, ch := range chains {
		if ch.Table == nil || ch.Table.Name != NATTable {
			continue
		}
		switch ch.Name {
		case chain:
			masq = ch
		case PostroutingChain:
			post = ch
		}
	}
	if masq == nil {
		return nil, nil
	}

	r := &Removal{Backend: BackendNFT, Family: family, Chain: chain}
	rules, err := c.GetRules(masq.Table, masq)
	if err != nil {
		return nil, fmt.Errorf("list the rules of chain %s: %w", chain, err)
	}
	for _, rule := range rules {
		r.Rules = append(r.Rules, renderNFT(chain, family, rule))
	}
	if post != nil {
		prules, err := c.GetRules(post.Table, post)
		if err != nil {
			return nil, fmt.Errorf("list the rules of chain %s: %w", PostroutingChain, err)
		}
		for _, rule := range prules {
			if !jumpsTo(rule, chain) {
				continue
			}
			if err := c.DelRule(rule); err != nil {
				return nil, err
			}
			r.Jumps = append(r.Jumps, renderNFT(PostroutingChain, family, rule))
		}
	}
	c.FlushChain(masq)
	c.DelChain(masq)
	if err := c.Flush(); err != nil {
		if errors.Is(err, unix.EBUSY) || strings.Contains(err.Error(), unix.EBUSY.Error()) {
			return nil, fmt.Errorf("a rule outside %s still jumps to %s: left everything in place: %w", PostroutingChain, chain, err)
		}
		return nil, fmt.Errorf("delete (nothing was changed, the transaction is atomic): %w", err)
	}
	return r, nil
}

// unsupported reports an error that means nf_tables is not in the kernel:
// no NETLINK_NETFILTER, or no nf_tables subsystem behind it. The library
// formats some errors with %v, so the text is checked too.
func unsupported(err error) bool {
	for _, e := range []unix.Errno{unix.EPROTONOSUPPORT, unix.EOPNOTSUPP, unix.EAFNOSUPPORT} {
		if errors.Is(err, e) || strings.Contains(err.Error(), e.Error()) {
			return true
		}
	}
	return false
}

// jumpsTo reports whether the rule jumps or goes to chain.
func jumpsTo(r *nftables.Rule, chain string) bool {
	for _, e := range r.Exprs {
		if v, ok := e.(*expr.Verdict); ok && (v.Kind == expr.VerdictJump || v.Kind == expr.VerdictGoto) && v.Chain == chain {
			return true
		}
	}
	return false
}

// renderNFT writes an iptables-nft rule in iptables-save syntax, for the
// parts that tell rules apart in a log: addresses, matches (with comments)
// and target. What it does not know it leaves out.
func renderNFT(chain string, family Family, r *nftables.Rule) string {
	parts := []string{"-A", chain}
	addrLen, srcAt, dstAt := uint32(4), uint32(12), uint32(16)
	if family == IPv6 {
		addrLen, srcAt, dstAt = 16, 8, 24
	}
	field := ""
	var mask []byte
	for _, e := range r.Exprs {
		switch e := e.(type) {
		case *expr.Payload:
			// iptables-nft loads only the bytes a prefix covers (one for a
			// /8), then masks the last one if the prefix ends inside it.
			field, mask = "", nil
			if e.Base == expr.PayloadBaseNetworkHeader && e.Len > 0 && e.Len <= addrLen {
				switch e.Offset {
				case srcAt:
					field = "-s"
				case dstAt:
					field = "-d"
				}
			}
		case *expr.Bitwise:
			mask = e.Mask
		case *expr.Cmp:
			if field == "" || len(e.Data) > int(addrLen) {
				continue
			}
			full := make([]byte, addrLen)
			copy(full, e.Data)
			a, _ := netip.AddrFromSlice(full)
			ones := 8 * len(e.Data)
			if mask != nil {
				ones = 0
				for _, b := range mask {
					ones += bits.OnesCount8(b)
				}
			}
			if e.Op == expr.CmpOpNeq {
				parts = append(parts, "!")
			}
			parts = append(parts, field, netip.PrefixFrom(a, ones).String())
			field = ""
		case *expr.Match:
			parts = append(parts, "-m", e.Name)
			switch i := e.Info.(type) {
			case *xt.Comment:
				parts = append(parts, "--comment", quote(string(*i)))
			case *xt.AddrType:
				parts = append(parts, addrtypeArgs(i.Source, i.Dest, i.InvertSource, i.InvertDest)...)
			case *xt.AddrTypeV1:
				parts = append(parts, addrtypeArgs(i.Source, i.Dest, i.Flags&1 != 0, i.Flags&2 != 0)...)
			}
		case *expr.Fib:
			if e.ResultADDRTYPE {
				parts = append(parts, "-m", "addrtype")
			}
		case *expr.Verdict:
			switch e.Kind {
			case expr.VerdictReturn:
				parts = append(parts, "-j", "RETURN")
			case expr.VerdictAccept:
				parts = append(parts, "-j", "ACCEPT")
			case expr.VerdictDrop:
				parts = append(parts, "-j", "DROP")
			case expr.VerdictJump:
				parts = append(parts, "-j", e.Chain)
			case expr.VerdictGoto:
				parts = append(parts, "-g", e.Chain)
			}
		case *expr.Masq:
			parts = append(parts, "-j", "MASQUERADE")
			if e.FullyRandom {
				parts = append(parts, "--random-fully")
			}
		case *expr.Target:
			parts = append(parts, "-j", e.Name)
			if natFlags(e.Info)&uint(xt.NatRangeProtoRandomFully) != 0 {
				parts = append(parts, "--random-fully")
			}
		}
	}
	if c, ok := userdata.GetString(r.UserData, userdata.TypeComment); ok {
		parts = append(parts, "-m", "comment", "--comment", quote(c))
	}
	return strings.Join(parts, " ")
}

// natFlags returns the flags of a MASQUERADE or SNAT target's range.
func natFlags(info xt.InfoAny) uint {
	switch i := info.(type) {
	case *xt.NatIPv4MultiRangeCompat:
		if len(*i) > 0 {
			return (*i)[0].Flags
		}
	case *xt.NatRange:
		return i.Flags
	case *xt.NatRange2:
		return i.Flags
	}
	return 0
}
