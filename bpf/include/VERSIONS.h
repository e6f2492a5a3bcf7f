/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Provenance of the vendored headers in this directory, so the object does not
 * depend on the build machine's kernel headers (compiled with -nostdinc):
 *
 *   linux/, asm/, asm-generic/  UAPI headers from Debian bookworm linux-libc-dev
 *                               6.1.192-2 (asm/ is its x86_64-linux-gnu/asm/);
 *                               GPL-2.0 WITH Linux-syscall-note.
 *   bpf/bpf_helpers.h,
 *   bpf/bpf_helper_defs.h,
 *   bpf/bpf_endian.h            libbpf 1.1.2 (Debian libbpf-dev 1:1.1.2-0+deb12u1);
 *                               LGPL-2.1 OR BSD-2-Clause.
 *
 * The files are copied unmodified. To update, copy the same set from a newer
 * package and record its version here.
 */
