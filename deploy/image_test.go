package deploy

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"debug/elf"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// testVersion is what TestImage stamps into the binary.
const testVersion = "v0.0.0-imagetest"

// containerTools fails the test when root lacks buildah, podman or runc
// (`make setup` installs them), and skips it without root.
func containerTools(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("image: needs root (buildah and podman with the vfs driver); run as root, e.g. `sudo make test`")
	}
	for _, tool := range []string{"buildah", "podman", "runc", "make"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is not installed (make setup installs it)", tool)
		}
	}
}

// readArchive returns the files of an OCI archive by path.
func readArchive(t *testing.T, path string) map[string][]byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	return readTar(t, f)
}

func readTar(t *testing.T, r io.Reader) map[string][]byte {
	t.Helper()
	files := map[string][]byte{}
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return files
		}
		if err != nil {
			t.Fatalf("read tar: %v", err)
		}
		if h.Typeflag != tar.TypeReg {
			files[strings.TrimPrefix(h.Name, "./")] = nil
			continue
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		files[strings.TrimPrefix(h.Name, "./")] = data
		if h.Mode&0o111 == 0 && strings.HasSuffix(h.Name, "ip-masq-agent") {
			t.Errorf("%s in the image is not executable (mode %o)", h.Name, h.Mode)
		}
	}
}

// blob returns a blob of the OCI layout by its "sha256:..." digest.
func blob(t *testing.T, files map[string][]byte, digest string) []byte {
	t.Helper()
	b, ok := files["blobs/"+strings.Replace(digest, ":", "/", 1)]
	if !ok {
		t.Fatalf("the archive has no blob %s", digest)
	}
	return b
}

// TestImage runs `make image` (the agent built as `make build` does for
// amd64 and arm64, the Dockerfile's final stage around each, with buildah
// offline, written as one manifest list in an OCI archive), checks that
// each image holds one static binary of its architecture as its
// entrypoint, runs the other architecture's binary under qemu-user, and
// runs the image with podman: it prints its flags, its version and a clear
// error from the debug command, without a shell in the image.
func TestImage(t *testing.T) {
	containerTools(t)
	tmp := t.TempDir()
	store := fmt.Sprintf("--storage-driver vfs --root %s/storage --runroot %s/run", tmp, tmp)
	archive := filepath.Join(tmp, "image.tar")
	cmd := exec.Command("make", "-C", "..", "image", "VERSION="+testVersion, "IMAGE=ip-masq-agent-test",
		"IMAGE_ARCHIVE="+archive, "BUILDAH=buildah "+store, "BIN=bin/imagetest/ip-masq-agent")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("make image: %v\n%s", err, out)
	}

	files := readArchive(t, archive)
	var index struct {
		Manifests []struct{ Digest, MediaType string } `json:"manifests"`
	}
	if err := json.Unmarshal(files["index.json"], &index); err != nil || len(index.Manifests) != 1 {
		t.Fatalf("index.json: %v %s", err, files["index.json"])
	}
	// One manifest list, with one image per architecture.
	var list struct {
		Manifests []struct {
			Digest   string
			Platform struct{ Architecture, OS string }
		} `json:"manifests"`
	}
	if err := json.Unmarshal(blob(t, files, index.Manifests[0].Digest), &list); err != nil {
		t.Fatal(err)
	}
	var arches []string
	for _, m := range list.Manifests {
		arch := m.Platform.Architecture
		arches = append(arches, m.Platform.OS+"/"+arch)
		if m.Platform.OS != "linux" {
			continue
		}
		bin := checkImage(t, files, m.Digest, arch)
		if bin != nil && arch != runtime.GOARCH {
			// The other architecture's binary runs under qemu-user.
			runEmulated(t, arch, bin)
		}
	}
	if strings.Join(arches, " ") != "linux/amd64 linux/arm64" {
		t.Fatalf("the manifest list holds %v, want linux/amd64 and linux/arm64", arches)
	}

	podman := func(args ...string) (string, error) {
		full := append(strings.Fields(store), "run", "--rm", "--runtime", "runc", "--network", "none",
			"--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024", "oci-archive:"+archive)
		cmd := exec.Command("podman", append(full, args...)...)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		return stdout.String() + stderr.String(), err
	}
	// The image store lives in tmp and goes with it.

	out, err := podman("-h")
	if err != nil {
		t.Fatalf("podman run IMAGE -h: %v\n%s", err, out)
	}
	for _, flag := range []string{"-config", "-pin-path", "-interfaces", "-attach-mode", "-metrics-address", "-health-address", "-masq-chain", "-v value"} {
		if !strings.Contains(out, "  "+flag) {
			t.Errorf("the image's usage does not list %s:\n%s", flag, out)
		}
	}
	if out, err := podman("version"); err != nil || !strings.Contains(out, testVersion) {
		t.Errorf("podman run IMAGE version: %v, want %s:\n%s", err, testVersion, out)
	}
	if out, err := podman("debug", "--pin-path=/sys/fs/bpf/nothing"); err == nil || !strings.Contains(out, "no ip-masq-agent pins") {
		t.Errorf("podman run IMAGE debug on a missing pin path: %v, want a non-zero exit and a clear message:\n%s", err, out)
	}
}

// elfMachine is the ELF machine of each image architecture.
var elfMachine = map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64}

// qemuUser is the qemu-user binary (make setup: qemu-user-static) that runs
// each architecture's binary on another.
var qemuUser = map[string]string{"amd64": "qemu-x86_64-static", "arm64": "qemu-aarch64-static"}

// checkImage checks the image of one architecture: its config says that
// architecture, its entrypoint is the binary, and its one layer holds the
// binary alone, static and built for it. It returns the binary.
func checkImage(t *testing.T, files map[string][]byte, digest, arch string) []byte {
	t.Helper()
	var manifest struct {
		Config struct{ Digest string } `json:"config"`
		Layers []struct{ Digest, MediaType string }
	}
	if err := json.Unmarshal(blob(t, files, digest), &manifest); err != nil {
		t.Fatal(err)
	}
	var cfg struct {
		Architecture string `json:"architecture"`
		Config       struct {
			Entrypoint []string
			Cmd        []string
			User       string
		} `json:"config"`
	}
	if err := json.Unmarshal(blob(t, files, manifest.Config.Digest), &cfg); err != nil {
		t.Fatal(err)
	}
	if cfg.Architecture != arch {
		t.Errorf("%s: the image config says architecture %q", arch, cfg.Architecture)
	}
	if strings.Join(cfg.Config.Entrypoint, " ") != "/ip-masq-agent" || len(cfg.Config.Cmd) != 0 {
		t.Errorf("%s: entrypoint %q, cmd %q; want [/ip-masq-agent] and none", arch, cfg.Config.Entrypoint, cfg.Config.Cmd)
	}
	if len(manifest.Layers) != 1 {
		t.Errorf("%s: %d layers, want one (the binary on scratch)", arch, len(manifest.Layers))
		return nil
	}
	var layer io.Reader = bytes.NewReader(blob(t, files, manifest.Layers[0].Digest))
	if strings.HasSuffix(manifest.Layers[0].MediaType, "+gzip") {
		zr, err := gzip.NewReader(layer)
		if err != nil {
			t.Fatal(err)
		}
		layer = zr
	}
	content := readTar(t, layer)
	var names []string
	for n := range content {
		names = append(names, n)
	}
	if len(names) != 1 || names[0] != "ip-masq-agent" {
		t.Errorf("%s: the image holds %v, want the binary alone", arch, names)
		return nil
	}
	bin, err := elf.NewFile(bytes.NewReader(content["ip-masq-agent"]))
	if err != nil {
		t.Errorf("%s: the binary is not ELF: %v", arch, err)
		return nil
	}
	if bin.Machine != elfMachine[arch] {
		t.Errorf("%s: the binary is built for %v", arch, bin.Machine)
	}
	for _, p := range bin.Progs {
		if p.Type == elf.PT_INTERP {
			t.Errorf("%s: the binary has an ELF interpreter: it is not static (CGO_ENABLED=0)", arch)
		}
	}
	if libs, _ := bin.ImportedLibraries(); len(libs) > 0 {
		t.Errorf("%s: the binary needs shared libraries %v", arch, libs)
	}
	return content["ip-masq-agent"]
}

// runEmulated runs the version subcommand of another architecture's binary
// under qemu-user, called directly (no binfmt_misc registration needed).
func runEmulated(t *testing.T, arch string, bin []byte) {
	t.Helper()
	qemu, err := exec.LookPath(qemuUser[arch])
	if err != nil {
		t.Errorf("%s: %s is not installed (make setup installs qemu-user-static): the %s binary is not run", arch, qemuUser[arch], arch)
		return
	}
	path := filepath.Join(t.TempDir(), "ip-masq-agent-"+arch)
	if err := os.WriteFile(path, bin, 0o755); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(qemu, path, "version").CombinedOutput()
	if err != nil || !strings.Contains(string(out), testVersion) {
		t.Errorf("%s: %s ip-masq-agent version: %v, want %s:\n%s", arch, qemuUser[arch], err, testVersion, out)
	}
}
