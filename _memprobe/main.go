// Throwaway: kernel memory of the datapath's maps and programs at a NAT size.
package main

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"reflect"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/ipmasq-ebpf/ip-masq-agent/loader"
)

func main() {
	n, _ := strconv.Atoi(os.Args[1])
	ipv6 := len(os.Args) > 2 && os.Args[2] == "ipv6"
	dir, _ := os.MkdirTemp("", "memprobe")
	if err := unix.Mount("bpf", dir, "bpf", 0, ""); err != nil {
		panic(err)
	}
	defer unix.Unmount(dir, unix.MNT_DETACH)
	d, err := loader.Open(loader.Options{PinPath: filepath.Join(dir, "ipm"), NATMaxEntries: uint32(n), SmallIPv6: !ipv6})
	if err != nil {
		panic(err)
	}
	defer d.Close()
	var maps, progs uint64
	per := map[string]uint64{}
	fds, _ := os.ReadDir("/proc/self/fdinfo")
	for _, fd := range fds {
		f, err := os.Open("/proc/self/fdinfo/" + fd.Name())
		if err != nil {
			continue
		}
		var memlock uint64
		isMap, isProg := false, false
		var id string
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			k, v, _ := strings.Cut(sc.Text(), ":")
			v = strings.TrimSpace(v)
			switch k {
			case "memlock":
				memlock, _ = strconv.ParseUint(v, 10, 64)
			case "map_type":
				isMap = true
			case "prog_type":
				isProg = true
			case "map_id", "prog_id":
				id = v
			}
		}
		f.Close()
		if isMap {
			maps += memlock
			per["map "+id] = memlock
		}
		if isProg {
			progs += memlock
		}
	}
	rv := reflect.ValueOf(d.Maps)
	for i := 0; i < rv.NumField(); i++ {
		m, ok := rv.Field(i).Interface().(*ebpf.Map)
		if !ok || m == nil {
			continue
		}
		info, _ := m.Info()
		ml, _ := info.Memlock()
		if os.Getenv("PER") != "" {
			fmt.Printf("  %-16s %-12s max=%-8d memlock=%d\n", info.Name, info.Type, info.MaxEntries, ml)
		}
	}
	fmt.Printf("nat=%d ipv6=%v maps=%d (%.1f MiB) progs=%d\n", n, ipv6, maps, float64(maps)/(1<<20), progs)
}
