package loader

import (
	"errors"
	"fmt"
	"os"

	"github.com/vishvananda/netlink"
	"k8s.io/klog/v2"
)

// Cleanup detaches every program of ours from every interface of the current
// network namespace (tcx links and tc filters, leaving other users' filters
// and the clsact qdiscs alone) and removes the pin directory. It refuses to
// run while an agent holds the pin directory.
func Cleanup(pinPath string) error {
	if _, err := os.Stat(pinPath); err == nil {
		lock, err := lockPinDir(pinPath)
		if err != nil {
			return fmt.Errorf("stop the agent first: %w", err)
		}
		defer lock.Close()
	}
	links, err := netlink.LinkList()
	if err != nil {
		return fmt.Errorf("list interfaces: %w", err)
	}
	var errs []error
	for _, l := range links {
		for _, dir := range []direction{ingress, egress} {
			errs = append(errs, detachOurTCX(l.Attrs().Index, dir, 0), removeTCFilters(l.Attrs().Index, dir))
		}
	}
	if err := os.RemoveAll(pinPath); err != nil {
		errs = append(errs, fmt.Errorf("remove pins: %w", err))
	}
	klog.InfoS("Cleaned up", "pinPath", pinPath)
	return errors.Join(errs...)
}
