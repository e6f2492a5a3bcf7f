package loader

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"

	"github.com/cilium/ebpf"
)

// OpenPinned opens the maps pinned under pinPath read-only, for tools that
// inspect a running datapath (the debug command): it takes no lock, loads no
// program and cannot change a map. Programs stay nil; Close releases the
// maps. A map this build knows but that is not pinned (an older agent's
// pins, or a map the agent does not pin) stays nil. Pins of another layout
// version are an error: this build would misread them.
func OpenPinned(pinPath string) (*Datapath, error) {
	if _, err := os.Stat(filepath.Join(pinPath, "ipm_settings")); err != nil {
		return nil, fmt.Errorf("open pinned datapath: no ip-masq-agent pins in %s (is --pin-path right, and has the agent run?): %w", pinPath, err)
	}
	if v, ok := pinnedLayout(pinPath); ok && v != Layout {
		return nil, fmt.Errorf("open pinned datapath: maps in %s have layout version %d, this build reads version %d", pinPath, v, Layout)
	}
	d := &Datapath{PinPath: pinPath}
	var errs []error
	v := reflect.ValueOf(&d.Maps).Elem()
	for i := 0; i < v.NumField(); i++ {
		name := v.Type().Field(i).Tag.Get("ebpf")
		if name == "" || v.Field(i).Type() != reflect.TypeOf((*ebpf.Map)(nil)) {
			continue
		}
		m, err := ebpf.LoadPinnedMap(filepath.Join(pinPath, name), &ebpf.LoadPinOptions{ReadOnly: true})
		switch {
		case errors.Is(err, os.ErrNotExist):
			continue
		case err != nil:
			errs = append(errs, fmt.Errorf("open pinned map %s: %w", name, err))
			continue
		}
		v.Field(i).Set(reflect.ValueOf(m))
	}
	if err := errors.Join(errs...); err != nil {
		d.Maps.Close()
		return nil, fmt.Errorf("open pinned datapath: %w", err)
	}
	return d, nil
}
