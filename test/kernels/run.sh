#!/usr/bin/env bash
# Boots Debian kernels under qemu (software emulation) and runs inside each:
# verifierstats (does every program load, verifier figures), the program
# test runs (test/prog) and the end-to-end suite (test/e2e), all built here
# as static binaries, in a minimal initramfs (busybox, iproute2, ethtool,
# iptables-legacy and the modules the tests need). Prints a Markdown matrix.
#
#   test/kernels/run.sh [SERIES...]       default: 5.10 6.1 6.12
#
# Environment:
#   KERNELS_RUN=stats,prog,e2e   what runs inside each VM
#   KERNELS_PROG_RUN=REGEX KERNELS_E2E_RUN=REGEX  -test.run of each suite
#   KERNELS_TIMEOUT=3600         seconds before a VM is killed
#   KERNELS_SMP=2 KERNELS_MEM=2048
#   KERNELS_REFRESH=1            re-read the Debian package lists now
#   KERNELS_CACHE=test/kernels/.cache  downloads, images and results
#   KERNELS_REV=HEAD             build from this commit instead of the work tree
#   KERNELS_SRC=DIR              build from this copy of the module instead
#
# Kernels come from the Debian archive (bullseye 5.10, bookworm 6.1, trixie
# 6.12, with their security suites), read with an apt configuration of its
# own under the cache: the system's apt sources are not touched. The newest
# linux-image-amd64 of each series is used; the report names the version.
# The VM's verdict is qemu's exit status through an isa-debug-exit device
# (1: everything passed, 3: something failed); details come back on
# dedicated serial ports, never scraped from the console.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
HERE=test/kernels
CACHE=${KERNELS_CACHE:-$ROOT/$HERE/.cache}
RUN=${KERNELS_RUN:-stats,prog,e2e}
PROG_RUN=${KERNELS_PROG_RUN:-.}
E2E_RUN=${KERNELS_E2E_RUN:-.}
TIMEOUT=${KERNELS_TIMEOUT:-3600}
SMP=${KERNELS_SMP:-2}
MEM=${KERNELS_MEM:-2048}
GO=${GO:-go}
SERIES=("$@")
[ ${#SERIES[@]} -gt 0 ] || SERIES=(5.10 6.1 6.12)

# Modules that init loads before the tests (the rest load on demand, as on
# a node). tc's clsact and cls_bpf are never requested by name by a netlink
# user that could autoload them, so they are here.
MODULES=(veth bridge sch_ingress cls_bpf)
# Drivers besides veth that the tests create (a pod's VXLAN tunnel), copied
# into the image and loaded on demand. A cached kernel whose image was made
# with another list is unpacked again.
EXTRA_DRIVERS=(vxlan)
# Host programs copied into the VM with their libraries: what the e2e tests
# exec (ip, tc, ethtool, iptables-legacy and -nft, ping, bpftool, and
# util-linux's setpriv, whose options busybox's lacks) and kmod for
# modprobe. Busybox covers sh, sysctl, cat, mount.
HOST_TOOLS=(/usr/sbin/ip /usr/sbin/tc /usr/sbin/ethtool /usr/sbin/xtables-legacy-multi
	/usr/sbin/xtables-nft-multi /usr/bin/ping /usr/sbin/bpftool /usr/bin/kmod /usr/bin/setpriv)
# Copied too when the host has them (debugging aids some tests reach for).
OPTIONAL_TOOLS=(/usr/bin/tcpdump /usr/bin/socat /usr/sbin/conntrack)
HOST_PACKAGES=(qemu-system-x86 busybox-static cpio iproute2 ethtool iptables iputils-ping bpftool kmod)

log() { echo "test-kernels: $*" >&2; }
die() { log "$*"; exit 1; }

[ "$(uname -m)" = x86_64 ] || die "needs an x86_64 host"
missing=()
for c in qemu-system-x86_64 busybox cpio depmod "${HOST_TOOLS[@]}"; do
	command -v "$c" >/dev/null || missing+=("$c")
done
if [ ${#missing[@]} -gt 0 ]; then
	[ "$(id -u)" = 0 ] || die "missing ${missing[*]}: apt-get install ${HOST_PACKAGES[*]}"
	log "installing ${HOST_PACKAGES[*]}"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${HOST_PACKAGES[@]}" >/dev/null
fi

mkdir -p "$CACHE"/{apt/lists/partial,apt/cache,debs,kernels,results}

# --- kernels from the Debian archive ---------------------------------------

cat >"$CACHE/apt/sources.list" <<'EOF'
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bullseye main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian-security bullseye-security main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian-security bookworm-security main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian-security trixie-security main
EOF
APT=(-o "Dir::Etc::sourcelist=$CACHE/apt/sources.list" -o Dir::Etc::sourceparts=-
	-o "Dir::State::Lists=$CACHE/apt/lists" -o "Dir::Cache=$CACHE/apt/cache"
	-o Dir::State::status=/dev/null -o Debug::NoLocking=1 -o APT::Sandbox::User=root
	-o Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false
	-o Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled=false
	-o Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled=false)
if [ -n "${KERNELS_REFRESH:-}" ] || [ -z "$(find "$CACHE/apt/lists" -name '*_Packages' -mtime -1 2>/dev/null)" ]; then
	log "reading the Debian package lists"
	apt-get "${APT[@]}" -qq update || die "apt-get update failed"
fi

# fetch_kernel SERIES: downloads the newest linux-image of the series and
# unpacks vmlinuz and the needed modules (decompressed) into
# $CACHE/kernels/ABI. Sets KVER (package version), KPKG (package) and KDIR.
fetch_kernel() {
	local series=$1 deb
	KVER=$(apt-cache "${APT[@]}" madison linux-image-amd64 |
		awk -v s="$series." 'index($3, s) == 1 {print $3}' | sort -V | tail -1)
	[ -n "$KVER" ] || die "no linux-image-amd64 of series $series in the archive"
	KPKG=$(apt-cache "${APT[@]}" show "linux-image-amd64=$KVER" |
		sed -n 's/^Depends: \(linux-image-[^ ,]*\).*/\1/p' | head -1)
	[ -n "$KPKG" ] || die "linux-image-amd64=$KVER: no kernel package in its Depends"
	local abi=${KPKG#linux-image-}
	KDIR=$CACHE/kernels/$abi
	if [ -f "$KDIR/modules.cpio" ] && [ -f "$KDIR/vmlinuz" ] &&
		[ "$(cat "$KDIR/drivers" 2>/dev/null)" = "${EXTRA_DRIVERS[*]}" ]; then
		return
	fi
	deb=$(ls "$CACHE/debs/${KPKG}_"*.deb 2>/dev/null | head -1 || true)
	if [ -z "$deb" ]; then
		log "downloading $KPKG ($KVER)"
		(cd "$CACHE/debs" && apt-get "${APT[@]}" -qq download "$KPKG") || die "download $KPKG failed"
		deb=$(ls "$CACHE/debs/${KPKG}_"*.deb | head -1)
	fi
	rm -rf "$KDIR" "$KDIR.tmp"
	mkdir -p "$KDIR.tmp/x"
	dpkg-deb -x "$deb" "$KDIR.tmp/x"
	cp "$KDIR.tmp"/x/boot/vmlinuz-* "$KDIR.tmp/vmlinuz"
	# lib/modules/ABI (bullseye, bookworm) or usr/lib/modules/ABI (trixie).
	# The networking, library and crypto modules go into the image, with
	# the indexes that depmod makes here (Debian ships none; they are made
	# on install), so that the VM's modprobe and the kernel's autoloading
	# (iptables, nf_tables, request_module) work as on a node.
	local moddir stage=$KDIR.tmp/stage/lib/modules/$abi
	moddir=$(find "$KDIR.tmp/x" -maxdepth 4 -type d -path "*/modules/$abi")
	[ -n "$moddir" ] || die "$KPKG: no modules directory"
	mkdir -p "$stage/kernel/drivers/net"
	cp -r "$moddir"/kernel/{net,lib,crypto} "$stage/kernel/"
	cp "$moddir"/kernel/drivers/net/veth.ko* "$stage/kernel/drivers/net/"
	local d
	for d in "${EXTRA_DRIVERS[@]}"; do
		# vxlan.ko* on 5.10 and 6.1, a vxlan/ directory on 6.12.
		cp -r "$moddir"/kernel/drivers/net/"$d"* "$stage/kernel/drivers/net/" ||
			die "$KPKG: driver $d is missing"
	done
	cp "$moddir"/modules.{order,builtin} "$stage/" 2>/dev/null || true
	[ ! -f "$moddir/modules.builtin.modinfo" ] || cp "$moddir/modules.builtin.modinfo" "$stage/"
	# Decompressed here: the VM's kmod would hand the kernel an .xz file.
	find "$stage" -name '*.ko.xz' -exec xz -d {} +
	depmod -b "$KDIR.tmp/stage" "$abi" || die "$KPKG: depmod failed"
	local m
	for m in "${MODULES[@]}" "${EXTRA_DRIVERS[@]}"; do
		modprobe -d "$KDIR.tmp/stage" -S "$abi" --show-depends "$m" >/dev/null ||
			die "$KPKG: module $m is missing"
	done
	mkdir -p "$KDIR.tmp/root/usr/lib/modules"
	mv "$stage" "$KDIR.tmp/root/usr/lib/modules/"
	(cd "$KDIR.tmp/root" && find . | LC_ALL=C sort | cpio -o -H newc --quiet) >"$KDIR.tmp/modules.cpio"
	rm -rf "$KDIR.tmp/x" "$KDIR.tmp/stage" "$KDIR.tmp/root"
	echo "$KPKG $KVER" >"$KDIR.tmp/package"
	echo "${EXTRA_DRIVERS[*]}" >"$KDIR.tmp/drivers"
	mv "$KDIR.tmp" "$KDIR"
}

# --- the root file system ----------------------------------------------------

BUILD=$CACHE/build
rm -rf "$BUILD"
mkdir -p "$BUILD/root"
R=$BUILD/root

# The binaries are built from the work tree, or from a commit with
# KERNELS_REV=HEAD (so that others' unfinished edits do not get in the way).
SRC=${KERNELS_SRC:-$ROOT}
if [ -n "${KERNELS_REV:-}" ]; then
	SRC=$CACHE/src
	rm -rf "$SRC"
	mkdir -p "$SRC"
	git archive "$KERNELS_REV" | tar -x -C "$SRC"
fi
if [ -n "${KERNELS_REV:-}" ]; then
	log "building the test binaries from $KERNELS_REV ($(git rev-parse --short "$KERNELS_REV"))"
else
	log "building the test binaries from $SRC"
fi
export CGO_ENABLED=0
(
	cd "$SRC"
	"$GO" build -trimpath -o "$R/bin/ip-masq-agent" ./cmd/ip-masq-agent
	"$GO" build -trimpath -o "$R/bin/verifierstats" ./$HERE/verifierstats
	"$GO" test -c -trimpath -o "$R/bin/prog.test" ./test/prog
	"$GO" test -c -trimpath -o "$R/bin/e2e.test" ./test/e2e
	for pkg in test/prog test/e2e; do
		mkdir -p "$R/src/$pkg"
		[ ! -d "$pkg/testdata" ] || cp -r "$pkg/testdata" "$R/src/$pkg/"
	done
	# Files of the repository that tests read (TestLeastPrivilege reads
	# the least-privilege DaemonSet).
	[ ! -d deploy ] || cp -r deploy "$R/src/"
) || die "build failed"

# Merged /usr like Debian: /lib and /lib64 point into /usr.
mkdir -p "$R"/{usr/bin,usr/sbin,usr/lib/x86_64-linux-gnu,usr/lib64,etc,proc,sys,dev,tmp,run,var,root}
ln -s usr/lib "$R/lib"
ln -s usr/lib64 "$R/lib64"
ln -s usr/sbin "$R/sbin"
ln -s ../run "$R/var/run"
cp "$(command -v busybox)" "$R/bin/busybox"
files=("${HOST_TOOLS[@]}" /usr/lib/x86_64-linux-gnu/xtables/*.so)
for f in "${OPTIONAL_TOOLS[@]}"; do
	[ ! -x "$f" ] || files+=("$f")
done
for f in "${files[@]}"; do
	mkdir -p "$R$(dirname "$f")"
	cp -L "$f" "$R$f"
done
# Debian's default: iptables is iptables-nft.
for x in iptables ip6tables; do
	for suffix in "" -save -restore; do
		ln -s xtables-nft-multi "$R/usr/sbin/$x$suffix"
		ln -s xtables-nft-multi "$R/usr/sbin/$x-nft$suffix"
		ln -s xtables-legacy-multi "$R/usr/sbin/$x-legacy$suffix"
	done
done
for name in modprobe insmod rmmod lsmod depmod modinfo; do
	ln -s ../bin/kmod "$R/usr/sbin/$name"
done
# Shared libraries of the host tools, at the paths the dynamic loader looks.
for lib in $(ldd "${files[@]}" 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// && $2 ~ /^\(0x/ {print $1}' | sort -u); do
	mkdir -p "$R$(dirname "$lib")"
	[ -e "$R$lib" ] || cp -L "$lib" "$R$lib"
done
for applet in $("$R/bin/busybox" --list); do
	[ -e "$R/bin/$applet" ] || [ -L "$R/usr/sbin/$applet" ] || [ -e "$R/usr/sbin/$applet" ] ||
		[ -e "$R/usr/bin/$applet" ] || ln -s busybox "$R/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$R/etc/passwd"
printf 'root:x:0:\n' >"$R/etc/group"
cp /etc/protocols /etc/services "$R/etc/" 2>/dev/null || true
install -m 0755 "$HERE/init" "$R/init"
printf '%s\n' "${MODULES[@]}" >"$R/etc/preload-modules"
(cd "$R" && find . | LC_ALL=C sort | cpio -o -H newc --quiet) >"$BUILD/root.cpio"
log "root: $(du -sh "$BUILD/root.cpio" | cut -f1) uncompressed"

# --- boot --------------------------------------------------------------------

STAMP=$(date -u +%Y%m%dT%H%M%SZ)
RESULTS=$CACHE/results/$STAMP
mkdir -p "$RESULTS"
overall=0
dirs=()
for series in "${SERIES[@]}"; do
	fetch_kernel "$series"
	abi=${KPKG#linux-image-}
	# tcx exists from 6.6: older kernels run the tc (clsact) path only.
	modes=tc
	if [ "$(printf '%s\n' 6.6 "$series" | sort -V | head -1)" = 6.6 ]; then
		modes=tcx,tc
	fi
	out=$RESULTS/$series
	mkdir -p "$out"
	cat "$BUILD/root.cpio" "$KDIR/modules.cpio" >"$out/initrd.cpio"

	# A VM that stops without any verdict (qemu exit 0) crashed before our
	# init could report: seen under TCG emulation (6.12, an
	# oops in the idle task while the kernel patched its own text). Boot it
	# once more; a crash our programs cause repeats and still fails.
	for attempt in 1 2; do
		log "booting $KPKG ($KVER), attach modes $modes, running $RUN"
		start=$(date +%s)
		: >"$out/console.log"
		tail -n +1 -F "$out/console.log" 2>/dev/null | sed -u "s/\r//; s/^/[$series] /" &
		tailpid=$!
		set +e
		timeout -k 10 "$TIMEOUT" qemu-system-x86_64 \
			-accel tcg,thread=multi -cpu max -smp "$SMP" -m "$MEM" \
			-nodefaults -display none -no-reboot \
			-kernel "$KDIR/vmlinuz" -initrd "$out/initrd.cpio" \
			-append "console=ttyS0 panic=-1 loglevel=4 ipmk.modes=$modes ipmk.run=$RUN ipmk.prog=$PROG_RUN ipmk.e2e=$E2E_RUN" \
			-serial "file:$out/console.log" -serial "file:$out/results.jsonl" \
			-serial "file:$out/prog.out" -serial "file:$out/e2e.out" \
			-device isa-debug-exit,iobase=0xf4,iosize=0x04
		rc=$?
		set -e
		wall=$(($(date +%s) - start))
		sleep 1
		kill "$tailpid" 2>/dev/null || true
		wait "$tailpid" 2>/dev/null || true
		[ "$rc" = 0 ] && [ "$attempt" = 1 ] || break
		cp "$out/console.log" "$out/console-first-boot.log"
		log "$series: the VM stopped without a verdict; booting it once more"
	done
	rm -f "$out/initrd.cpio"
	case $rc in
	1) verdict=pass ;;
	3) verdict=fail ;;
	124 | 137) verdict="timeout after ${TIMEOUT}s" ;;
	*) verdict="no verdict (qemu exit $rc: the VM stopped without reporting)" ;;
	esac
	log "$series: $verdict in ${wall}s"
	[ "$verdict" = pass ] || overall=1
	printf '{"series":"%s","package":"%s","version":"%s","modes":"%s","qemu_exit":%d,"verdict":"%s","wall_seconds":%d,"smp":%d}\n' \
		"$series" "$KPKG" "$KVER" "$modes" "$rc" "$verdict" "$wall" "$SMP" >"$out/meta.json"
	dirs+=("$out")
done

"$GO" run ./$HERE/report "${dirs[@]}" | tee "$RESULTS/matrix.md"
log "results in $RESULTS"
exit $overall
