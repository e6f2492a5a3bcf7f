package loader

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/rlimit"
	"k8s.io/klog/v2"
)

// Options says where the datapath's state lives and how big it is.
type Options struct {
	// PinPath is a directory on a bpffs that holds the pinned maps and links.
	PinPath string
	// NATMaxEntries bounds the NAT table (two entries per flow).
	NATMaxEntries uint32
	// Variant picks a build of the object; the default tries the fastest
	// the kernel accepts (variant.go).
	Variant Variant
	// SmallIPv6 shrinks the IPv6 state maps to a token size: without
	// --enable-ipv6 the programs pass IPv6 before touching them, and at
	// full size they hold 37 MiB of preallocated kernel memory. Turning
	// IPv6 on later replaces them (there is no IPv6 state to lose).
	SmallIPv6 bool
}

// ipv6StateMaps are the preallocated IPv6 maps SmallIPv6 shrinks; the IPv6
// tries allocate per prefix and cost nothing empty.
var ipv6StateMaps = []string{"ipm_nat6", "ipm_hostres6", "ipm_inbound6", "ipm_nomasq_tcp6", "ipm_frag6", "ipm_recent6"}

// smallIPv6Entries is the token size: enough for an LRU map's per-CPU lists
// on any machine this runs on.
const smallIPv6Entries = 1024

// Datapath owns the loaded programs and maps. Maps are pinned under PinPath
// and shared with every earlier and later agent; programs are new on every
// load and take over from the old ones only when attached.
type Datapath struct {
	PinPath string
	// Variant is the build of the object that the kernel accepted.
	Variant  Variant
	Maps     BPFMaps
	Programs BPFPrograms
	lock     *os.File
	// Maps carried over from incompatible pins, waiting for the takeover
	// (migrate.go).
	migrations []*migration
}

// Open loads the datapath object, reusing the maps pinned under o.PinPath and
// pinning the ones it had to create. It holds the pin directory's lock until
// Close. Nothing is attached yet, so the running datapath is not touched.
func Open(o Options) (*Datapath, error) {
	// A bad IPM_DATAPATH_VARIANT fails before anything is touched.
	if _, err := candidates(o.Variant); err != nil {
		return nil, err
	}
	if err := rlimit.RemoveMemlock(); err != nil {
		// 5.10 still charges BPF memory to RLIMIT_MEMLOCK.
		return nil, fmt.Errorf("raise RLIMIT_MEMLOCK: %w", err)
	}
	warning, err := preparePinDir(o.PinPath)
	if err != nil {
		return nil, err
	}
	if warning != "" {
		klog.InfoS("WARNING: " + warning)
	}
	lock, err := lockPinDir(o.PinPath)
	if err != nil {
		return nil, err
	}
	d := &Datapath{PinPath: o.PinPath, lock: lock}
	if err := d.load(o); err != nil {
		lock.Close()
		return nil, err
	}
	return d, nil
}

// load loads the first variant of the object the kernel accepts. A variant
// that needs what the kernel lacks (a kfunc, BTF) fails at load, before any
// pinned map or attachment is touched, so falling back costs nothing.
func (d *Datapath) load(o Options) error {
	variants, err := candidates(o.Variant)
	if err != nil {
		return err
	}
	for i, v := range variants {
		err = d.loadVariant(o, v)
		if err == nil {
			d.Variant = v
			return nil
		}
		if i < len(variants)-1 {
			// The short form: the last verifier line, not the log.
			klog.InfoS("Datapath build not accepted by this kernel, trying the next", "variant", v, "next", variants[i+1], "reason", err.Error())
		}
	}
	var verr *ebpf.VerifierError
	if errors.As(err, &verr) {
		return fmt.Errorf("verifier rejected the datapath: %+v", verr)
	}
	return err
}

func (d *Datapath) loadVariant(o Options, v Variant) error {
	spec, err := specOf(v)
	if err != nil {
		return fmt.Errorf("read datapath object %s: %w", v, err)
	}
	if o.NATMaxEntries != 0 {
		spec.Maps["ipm_nat4"].MaxEntries = o.NATMaxEntries
		spec.Maps["ipm_nat6"].MaxEntries = o.NATMaxEntries
	}
	if o.SmallIPv6 {
		for _, name := range ipv6StateMaps {
			spec.Maps[name].MaxEntries = smallIPv6Entries
		}
	}
	reuse, carry, err := reusePinnedMaps(spec, d.PinPath)
	if err != nil {
		return err
	}
	defer closeAll(reuse)

	var objs BPFObjects
	err = spec.LoadAndAssign(&objs, &ebpf.CollectionOptions{MapReplacements: reuse})
	if err != nil {
		closeMigrations(carry)
		return fmt.Errorf("load datapath (%s build): %w", v, err)
	}
	var migrations []*migration
	for name, m := range mapsByName(&objs.BPFMaps) {
		if _, reused := reuse[name]; reused {
			continue
		}
		if mg := findMigration(carry, name); mg != nil {
			// Pinned only after the takeover (CompleteMigration):
			// until then the old programs use the old map.
			mg.new = m
			copied, dropped, err := mg.firstCopy()
			if err != nil {
				klog.ErrorS(err, "Copying a pinned map was incomplete; what the copy missed is lost", "map", name)
			}
			klog.InfoS("Carrying a pinned map over to a new one", "map", name, "copied", copied, "dropped", dropped,
				"maxEntries", m.MaxEntries(), "was", mg.old.MaxEntries(), "layout", mg.from)
			migrations = append(migrations, mg)
			continue
		}
		if err := pinAtomically(m, filepath.Join(d.PinPath, name)); err != nil {
			objs.Close()
			closeMigrations(carry)
			return err
		}
	}
	d.Maps = objs.BPFMaps
	d.Programs = objs.BPFPrograms
	d.migrations = migrations
	return nil
}

func findMigration(ms []*migration, name string) *migration {
	for _, m := range ms {
		if m.name == name {
			return m
		}
	}
	return nil
}

// mapsByName lists the maps that are pinned, by their pin name, which is
// their BPF name. ipm_scratch is per-packet scratch space and not pinned.
func mapsByName(m *BPFMaps) map[string]*ebpf.Map {
	return map[string]*ebpf.Map{
		"ipm_nat4":        m.IpmNat4,
		"ipm_nat6":        m.IpmNat6,
		"ipm_cidr4_0":     m.IpmCidr40,
		"ipm_cidr4_1":     m.IpmCidr41,
		"ipm_cidr4_dir":   m.IpmCidr4Dir,
		"ipm_cidr6_0":     m.IpmCidr60,
		"ipm_cidr6_1":     m.IpmCidr61,
		"ipm_frag4":       m.IpmFrag4,
		"ipm_frag6":       m.IpmFrag6,
		"ipm_inbound4":    m.IpmInbound4,
		"ipm_inbound6":    m.IpmInbound6,
		"ipm_nomasq_tcp4": m.IpmNomasqTcp4,
		"ipm_nomasq_tcp6": m.IpmNomasqTcp6,
		"ipm_hostres4":    m.IpmHostres4,
		"ipm_hostres6":    m.IpmHostres6,
		"ipm_settings":    m.IpmSettings,
		"ipm_ifaces":      m.IpmIfaces,
		"ipm_local4":      m.IpmLocal4,
		"ipm_local6":      m.IpmLocal6,
		"ipm_src4":        m.IpmSrc4,
		"ipm_src6":        m.IpmSrc6,
		"ipm_stats":       m.IpmStats,
		"ipm_recent4":     m.IpmRecent4,
		"ipm_recent6":     m.IpmRecent6,
		"ipm_recent_pos":  m.IpmRecentPos,
	}
}

// Close releases the agent's file descriptors and the pin directory's lock.
// Pins and attachments stay: the datapath keeps working without the agent.
func (d *Datapath) Close() error {
	closeMigrations(d.migrations)
	err := errors.Join(d.Maps.Close(), d.Programs.Close())
	if d.lock != nil {
		err = errors.Join(err, d.lock.Close())
	}
	return err
}
