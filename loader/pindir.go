package loader

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// preparePinDir makes dir a directory on a bpffs (docs/behaviour.md §10). It never mounts
// over or inside an existing bpffs: when the nearest existing ancestor is a
// bpffs it only creates directories. Only when no ancestor is a bpffs does it
// mount one at dir's parent; it then returns a warning, because a mount made
// inside a private mount namespace (ip netns exec) dies with the process.
func preparePinDir(dir string) (warning string, err error) {
	if !filepath.IsAbs(dir) {
		return "", fmt.Errorf("pin path %q: must be absolute", dir)
	}
	ancestor := dir
	for {
		if _, err := os.Stat(ancestor); err == nil {
			break
		} else if !errors.Is(err, os.ErrNotExist) {
			return "", fmt.Errorf("stat %s: %w", ancestor, err)
		}
		ancestor = filepath.Dir(ancestor)
	}
	onBPFFS, err := isBPFFS(ancestor)
	if err != nil {
		return "", err
	}
	if !onBPFFS {
		parent := filepath.Dir(dir)
		if err := os.MkdirAll(parent, 0o755); err != nil {
			return "", fmt.Errorf("create %s: %w", parent, err)
		}
		if err := unix.Mount("bpf", parent, "bpf", 0, "mode=0700"); err != nil {
			return "", fmt.Errorf("mount bpffs at %s: %w", parent, err)
		}
		warning = fmt.Sprintf("no bpffs above %s: mounted one at %s; pins made in a private mount namespace vanish when it ends", dir, parent)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return warning, fmt.Errorf("create pin directory %s: %w", dir, err)
	}
	if ok, err := isBPFFS(dir); err != nil || !ok {
		return warning, fmt.Errorf("pin directory %s is not on a bpffs", dir)
	}
	return warning, nil
}

func isBPFFS(path string) (bool, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return false, fmt.Errorf("statfs %s: %w", path, err)
	}
	return uint32(st.Type) == unix.BPF_FS_MAGIC, nil
}

// lockPinDir takes an exclusive, non-blocking lock on the pin directory, so
// that a second agent on the same pins exits instead of fighting the first.
// The lock lives as long as the returned file.
func lockPinDir(dir string) (*os.File, error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, fmt.Errorf("open pin directory %s: %w", dir, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("another ip-masq-agent holds the lock on %s: only one agent may use a pin directory", dir)
		}
		return nil, fmt.Errorf("lock pin directory %s: %w", dir, err)
	}
	return f, nil
}
